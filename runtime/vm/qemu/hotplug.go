package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// AddReadOnlyDisk hot-plugs the raw image at path as a read-only
// virtio-blk disk with the given serial (QMP blockdev-add + device_add on
// the machine's root PCI bus; the guest's ACPI PCI hotplug driver
// announces it). id names the block node and device in QEMU and must be
// unique in this VM. The path reaches QEMU only, never the guest.
//
// bus, if not empty, is the id of the PCI bridge to plug the disk into.
func (p *Process) AddReadOnlyDisk(path, id, serial, bus string, timeout time.Duration) error {
	mon, err := p.qmpConnect(timeout)
	if err != nil {
		return err
	}
	defer mon.Disconnect()
	node := roNode(id)
	if err := qmpRun(mon, "blockdev-add", map[string]any{
		"driver": "raw", "node-name": node, "read-only": true,
		"file": map[string]any{"driver": "file", "filename": path, "read-only": true},
	}); err != nil {
		return fmt.Errorf("qmp blockdev-add of layer disk %s: %w", serial, err)
	}
	devArgs := map[string]any{"driver": "virtio-blk-pci", "id": roDevice(id), "drive": node, "serial": serial}
	if bus != "" {
		devArgs["bus"] = bus
	}
	if err := qmpRun(mon, "device_add", devArgs); err != nil {
		qmpRun(mon, "blockdev-del", map[string]any{"node-name": node})
		return fmt.Errorf("qmp device_add of layer disk %s: %w", serial, err)
	}
	return nil
}

// ErrUnplugPending is returned by RemoveReadOnlyDisk when QEMU still has
// the device when the timeout ends: the guest has not released it (yet).
// The device may still go later, so its id and serial must not be reused.
var ErrUnplugPending = errors.New("the guest did not release the device")

// unplugPoll is how often RemoveReadOnlyDisk looks whether the device is
// gone.
var unplugPoll = 50 * time.Millisecond

// RemoveReadOnlyDisk unplugs the disk AddReadOnlyDisk plugged with id:
// QMP device_del (an ACPI eject request to the guest), a wait until QEMU
// no longer lists the device under /machine/peripheral (the guest has
// released it and QEMU removed it), then blockdev-del of its block node.
// gone reports whether the device has left the VM (its PCI slot is free),
// even when an error follows (blockdev-del failed: the node name stays
// taken). A device still present when timeout ends gives ErrUnplugPending.
func (p *Process) RemoveReadOnlyDisk(id string, timeout time.Duration) (gone bool, _ error) {
	deadline := time.Now().Add(timeout)
	mon, err := p.qmpConnect(timeout)
	if err != nil {
		return false, err
	}
	defer mon.Disconnect()
	dev := roDevice(id)
	if err := qmpRun(mon, "device_del", map[string]any{"id": dev}); err != nil {
		return false, fmt.Errorf("qmp device_del of %s: %w", dev, err)
	}
	for {
		present, err := peripheralPresent(mon, dev)
		if err != nil {
			return false, fmt.Errorf("qmp qom-list after device_del of %s: %w", dev, err)
		}
		if !present {
			break
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("device_del of %s: still present after %s: %w", dev, timeout, ErrUnplugPending)
		}
		time.Sleep(unplugPoll)
	}
	// QEMU drops the device from the tree before the device's block
	// backend lets go of the node: blockdev-del says "in use" meanwhile.
	for {
		err := qmpRun(mon, "blockdev-del", map[string]any{"node-name": roNode(id)})
		if err == nil {
			return true, nil
		}
		if time.Now().After(deadline) {
			return true, fmt.Errorf("qmp blockdev-del of %s: %w", roNode(id), err)
		}
		time.Sleep(unplugPoll)
	}
}

// peripheralPresent reports whether QEMU has a device with the user id
// dev (a child of /machine/peripheral).
func peripheralPresent(mon qmp.Monitor, dev string) (bool, error) {
	b, err := qmpRunOut(mon, "qom-list", map[string]any{"path": "/machine/peripheral"})
	if err != nil {
		return false, err
	}
	var resp struct {
		Return []struct {
			Name string `json:"name"`
		} `json:"return"`
	}
	if err := json.Unmarshal(b, &resp); err != nil {
		return false, fmt.Errorf("qom-list reply: %w", err)
	}
	for _, c := range resp.Return {
		if c.Name == dev {
			return true, nil
		}
	}
	return false, nil
}

func roNode(id string) string   { return "ro-node-" + id }
func roDevice(id string) string { return "ro-dev-" + id }

// qmpRun runs one QMP command with arguments, as raw JSON: go-qemu's typed
// API has no blockdev-add "file" child nor device_add properties (drive,
// serial).
func qmpRun(mon qmp.Monitor, cmd string, args map[string]any) error {
	_, err := qmpRunOut(mon, cmd, args)
	return err
}

func qmpRunOut(mon qmp.Monitor, cmd string, args map[string]any) ([]byte, error) {
	b, err := json.Marshal(map[string]any{"execute": cmd, "arguments": args})
	if err != nil {
		return nil, err
	}
	return mon.Run(b)
}

// qmpConnect opens a QMP connection to the VM (p.dial's, in tests).
func (p *Process) qmpConnect(timeout time.Duration) (qmp.Monitor, error) {
	var mon qmp.Monitor
	if p.dial != nil {
		mon = p.dial()
	} else {
		if p.cfg.QMPSocket == "" {
			return nil, fmt.Errorf("vm %s has no QMP socket", p.cfg.Name)
		}
		mon = NewQMPConn(p.cfg.QMPSocket, timeout)
	}
	if err := mon.Connect(); err != nil {
		return nil, fmt.Errorf("qmp connect: %w", err)
	}
	return mon, nil
}
