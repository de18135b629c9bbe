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
	// RemoveReadOnlyDisk unplugs the disk attached with id and returns
	// once the guest has released it and QEMU dropped it. On an error
	// the disk may still be (or become) present: the caller must not
	// reuse its id or serial.
	RemoveReadOnlyDisk(ctx context.Context, id string) error
}

// ErrUnplugPending is returned (wrapped) by RemoveReadOnlyDisk when the
// guest did not release the device in time.
var ErrUnplugPending = qemu.ErrUnplugPending

// unplugTimeout bounds the wait for the guest to release an unplugged
// disk.
const unplugTimeout = 20 * time.Second

// roSlots places hot-plugged read-only disks: slot i is on layer bridge
// i/qemu.BridgeSlots while there are bridges, then on the root bus. A
// slot is reused once the disk on it is gone.
type roSlots struct {
	byID map[string]int // disk id -> slot
	used map[int]bool
}

// take returns the lowest free slot and marks it used by id.
func (r *roSlots) take(id string) int {
	if r.byID == nil {
		r.byID, r.used = map[string]int{}, map[int]bool{}
	}
	n := 0
	for r.used[n] {
		n++
	}
	r.used[n], r.byID[id] = true, n
	return n
}

// free releases id's slot.
func (r *roSlots) free(id string) {
	if n, ok := r.byID[id]; ok {
		delete(r.used, n)
		delete(r.byID, id)
	}
}

// bus is the QEMU bus of slot n ("" for the root bus) with bridges layer
// bridges.
func slotBus(n, bridges int) string {
	if b := n / qemu.BridgeSlots; b < bridges {
		return qemu.LayerBridgeID(b)
	}
	return ""
}

func qmpTimeout(ctx context.Context, max time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < max {
		return time.Until(dl)
	}
	return max
}

// AddReadOnlyDisk implements ReadOnlyDisks over QMP.
func (v *qemuVM) AddReadOnlyDisk(ctx context.Context, path, id, serial string) error {
	if strings.ContainsAny(id, ",= ") {
		return errors.New("invalid disk id")
	}
	v.mu.Lock()
	proc := v.proc
	if proc == nil {
		v.mu.Unlock()
		return errors.New("vm is not running")
	}
	// Fill the layer bridges first, then what the root bus has left.
	bus := slotBus(v.roSlots.take(id), v.opts.Config.LayerBridges)
	v.mu.Unlock()
	if err := proc.AddReadOnlyDisk(path, id, serial, bus, qmpTimeout(ctx, 30*time.Second)); err != nil {
		v.mu.Lock()
		v.roSlots.free(id)
		v.mu.Unlock()
		return err
	}
	return nil
}

// RemoveReadOnlyDisk implements ReadOnlyDisks over QMP. The disk's slot
// is freed only once QEMU no longer has the device.
func (v *qemuVM) RemoveReadOnlyDisk(ctx context.Context, id string) error {
	v.mu.Lock()
	proc := v.proc
	v.mu.Unlock()
	if proc == nil {
		return errors.New("vm is not running")
	}
	gone, err := proc.RemoveReadOnlyDisk(id, qmpTimeout(ctx, unplugTimeout))
	if gone {
		v.mu.Lock()
		v.roSlots.free(id)
		v.mu.Unlock()
	}
	return err
}
