package vm

import (
	"testing"

	"github.com/raksh-project/raksh/runtime/vm/qemu"
)

// TestROSlots checks hot-plugged disks fill the layer bridges, then the
// root bus, and that an unplugged disk's slot (only its) is reused.
func TestROSlots(t *testing.T) {
	var r roSlots
	const bridges = 2
	var buses []string
	for i := 0; i < 2*qemu.BridgeSlots+2; i++ {
		buses = append(buses, slotBus(r.take(string(rune('a'+i%26))+string(rune('0'+i/26))), bridges))
	}
	if buses[0] != qemu.LayerBridgeID(0) || buses[qemu.BridgeSlots-1] != qemu.LayerBridgeID(0) ||
		buses[qemu.BridgeSlots] != qemu.LayerBridgeID(1) || buses[2*qemu.BridgeSlots-1] != qemu.LayerBridgeID(1) ||
		buses[2*qemu.BridgeSlots] != "" || buses[2*qemu.BridgeSlots+1] != "" {
		t.Fatalf("buses %v", buses)
	}
	// Free a disk on the first bridge and one on the second: the next
	// disks take those slots, lowest first, before the root bus.
	r.free("c0") // slot 2
	r.free("f1") // slot 26+5 = 31, the second bridge's first
	r.free("nope")
	if n := r.take("x"); n != 2 {
		t.Errorf("first reused slot %d, want 2", n)
	}
	if n := r.take("y"); n != qemu.BridgeSlots {
		t.Errorf("second reused slot %d, want %d", n, qemu.BridgeSlots)
	}
	if n := r.take("z"); n != 2*qemu.BridgeSlots+2 {
		t.Errorf("next slot %d, want %d", n, 2*qemu.BridgeSlots+2)
	}
}
