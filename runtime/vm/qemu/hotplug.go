package qemu

import (
	"encoding/json"
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
	node := "ro-node-" + id
	add, err := json.Marshal(map[string]any{
		"execute": "blockdev-add",
		"arguments": map[string]any{
			"driver": "raw", "node-name": node, "read-only": true,
			"file": map[string]any{"driver": "file", "filename": path, "read-only": true},
		},
	})
	if err != nil {
		return err
	}
	if _, err := p.qmpRaw(string(add), timeout); err != nil {
		return fmt.Errorf("qmp blockdev-add of layer disk %s: %w", serial, err)
	}
	devArgs := map[string]any{"driver": "virtio-blk-pci", "id": "ro-dev-" + id, "drive": node, "serial": serial}
	if bus != "" {
		devArgs["bus"] = bus
	}
	dev, err := json.Marshal(map[string]any{"execute": "device_add", "arguments": devArgs})
	if err != nil {
		return err
	}
	if _, err := p.qmpRaw(string(dev), timeout); err != nil {
		del, _ := json.Marshal(map[string]any{"execute": "blockdev-del", "arguments": map[string]any{"node-name": node}})
		p.qmpRaw(string(del), timeout)
		return fmt.Errorf("qmp device_add of layer disk %s: %w", serial, err)
	}
	return nil
}

// qmpRaw runs one QMP command given as JSON over a new QMP connection.
// go-qemu's typed API has no blockdev-add "file" child nor device_add
// properties (drive, serial), so these two commands go as raw JSON.
func (p *Process) qmpRaw(cmd string, timeout time.Duration) ([]byte, error) {
	if p.cfg.QMPSocket == "" {
		return nil, fmt.Errorf("vm %s has no QMP socket", p.cfg.Name)
	}
	mon, err := qmp.NewSocketMonitor("unix", p.cfg.QMPSocket, timeout)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	if err := mon.Connect(); err != nil {
		return nil, fmt.Errorf("qmp connect: %w", err)
	}
	defer mon.Disconnect()
	return mon.Run([]byte(cmd))
}
