package vm

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/raksh-project/raksh/runtime/vm/qemu"
)

// ReadOnlyDisks is implemented by Instances that can hot-plug read-only
// disks into a running VM (the erofs layers of plain images).
type ReadOnlyDisks interface {
	// AddReadOnlyDisk attaches the raw image at path as a read-only
	// virtio-blk disk with serial; id is unique within the VM.
	AddReadOnlyDisk(ctx context.Context, path, id, serial string) error
}

// AddReadOnlyDisk implements ReadOnlyDisks over QMP.
func (v *qemuVM) AddReadOnlyDisk(ctx context.Context, path, id, serial string) error {
	v.mu.Lock()
	proc := v.proc
	v.mu.Unlock()
	if proc == nil {
		return errors.New("vm is not running")
	}
	timeout := 30 * time.Second
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	if strings.ContainsAny(id, ",= ") {
		return errors.New("invalid disk id")
	}
	// Fill the layer bridges first, then what the root bus has left.
	v.mu.Lock()
	n := v.roDisks
	v.roDisks++
	v.mu.Unlock()
	bus := ""
	if b := n / qemu.BridgeSlots; b < v.opts.Config.LayerBridges {
		bus = qemu.LayerBridgeID(b)
	}
	return proc.AddReadOnlyDisk(path, id, serial, bus, timeout)
}
