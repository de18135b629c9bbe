package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// fakeMonitor answers QMP commands as a QEMU whose guest releases an
// unplugged device after releaseAfter qom-list polls (never, if < 0).
type fakeMonitor struct {
	cmds         []string // "execute arguments-json"
	fail         map[string]bool
	failTimes    map[string]int // fail a command that many times, then succeed
	devices      map[string]bool
	releaseAfter int
	polls        int
	connects     int
}

func (f *fakeMonitor) Connect() error    { f.connects++; return nil }
func (f *fakeMonitor) Disconnect() error { return nil }
func (f *fakeMonitor) Events(context.Context) (<-chan qmp.Event, error) {
	return nil, qmp.ErrEventsNotSupported
}

func (f *fakeMonitor) Run(b []byte) ([]byte, error) {
	var c struct {
		Execute   string         `json:"execute"`
		Arguments map[string]any `json:"arguments"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, err
	}
	args, _ := json.Marshal(c.Arguments)
	f.cmds = append(f.cmds, c.Execute+" "+string(args))
	if f.fail[c.Execute] {
		return nil, fmt.Errorf("%s failed", c.Execute)
	}
	if f.failTimes[c.Execute] > 0 {
		f.failTimes[c.Execute]--
		return nil, fmt.Errorf("%s: in use", c.Execute)
	}
	switch c.Execute {
	case "device_add":
		f.devices[c.Arguments["id"].(string)] = true
	case "qom-list":
		f.polls++
		if f.releaseAfter >= 0 && f.polls > f.releaseAfter {
			clear(f.devices)
		}
		var kids []map[string]string
		for d := range f.devices {
			kids = append(kids, map[string]string{"name": d, "type": "child<virtio-blk-pci>"})
		}
		kids = append(kids, map[string]string{"name": "type", "type": "string"})
		return json.Marshal(map[string]any{"return": kids})
	}
	return []byte(`{"return": {}}`), nil
}

func (f *fakeMonitor) executed() []string {
	var out []string
	for _, c := range f.cmds {
		out = append(out, strings.Fields(c)[0])
	}
	return out
}

func fakeProcess(f *fakeMonitor) *Process {
	return &Process{cfg: Config{Name: "t"}, dial: func() qmp.Monitor { return f }}
}

// TestAddReadOnlyDisk checks the hot-plug's QMP sequence: a read-only raw
// node on the file, then a virtio-blk device with the serial on the given
// bridge; a failed device_add deletes the node again.
func TestAddReadOnlyDisk(t *testing.T) {
	f := &fakeMonitor{devices: map[string]bool{}}
	if err := fakeProcess(f).AddReadOnlyDisk("/snap/7/raksh-layer.erofs", "3", "raksh-ro-3", "rk-layers0", time.Second); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`blockdev-add {"driver":"raw","file":{"driver":"file","filename":"/snap/7/raksh-layer.erofs","read-only":true},"node-name":"ro-node-3","read-only":true}`,
		`device_add {"bus":"rk-layers0","drive":"ro-node-3","driver":"virtio-blk-pci","id":"ro-dev-3","serial":"raksh-ro-3"}`,
	}
	if !slices.Equal(f.cmds, want) {
		t.Fatalf("commands\n%s\nwant\n%s", strings.Join(f.cmds, "\n"), strings.Join(want, "\n"))
	}
	f = &fakeMonitor{devices: map[string]bool{}, fail: map[string]bool{"device_add": true}}
	if err := fakeProcess(f).AddReadOnlyDisk("/x", "4", "raksh-ro-4", "", time.Second); err == nil {
		t.Fatal("a failed device_add was not reported")
	}
	if got := f.executed(); !slices.Equal(got, []string{"blockdev-add", "device_add", "blockdev-del"}) {
		t.Errorf("after a failed device_add: %v", got)
	}
	if strings.Contains(f.cmds[1], "bus") {
		t.Errorf("root bus disk named a bus: %s", f.cmds[1])
	}
}

// TestRemoveReadOnlyDisk checks the unplug's QMP sequence: device_del,
// polls until QEMU no longer lists the device, then blockdev-del; a guest
// that never releases the device gives ErrUnplugPending without
// blockdev-del (the node is still the device's); blockdev-del is retried
// while the node is in use; a blockdev-del failing until the timeout after
// the device went is an error with gone set.
func TestRemoveReadOnlyDisk(t *testing.T) {
	old := unplugPoll
	unplugPoll = time.Millisecond
	t.Cleanup(func() { unplugPoll = old })

	f := &fakeMonitor{devices: map[string]bool{"ro-dev-3": true}, releaseAfter: 3}
	gone, err := fakeProcess(f).RemoveReadOnlyDisk("3", 5*time.Second)
	if err != nil || !gone {
		t.Fatalf("remove: gone %v, %v", gone, err)
	}
	want := []string{"device_del", "qom-list", "qom-list", "qom-list", "qom-list", "blockdev-del"}
	if got := f.executed(); !slices.Equal(got, want) {
		t.Fatalf("commands %v, want %v", got, want)
	}
	if f.cmds[0] != `device_del {"id":"ro-dev-3"}` || f.cmds[5] != `blockdev-del {"node-name":"ro-node-3"}` {
		t.Errorf("commands %q", f.cmds)
	}
	if f.connects != 1 {
		t.Errorf("%d QMP connections, want one for the sequence", f.connects)
	}

	// The node is still held by the departing device for a moment.
	f = &fakeMonitor{devices: map[string]bool{"ro-dev-3": true}, failTimes: map[string]int{"blockdev-del": 2}}
	if gone, err := fakeProcess(f).RemoveReadOnlyDisk("3", 5*time.Second); err != nil || !gone {
		t.Fatalf("remove with a node briefly in use: gone %v, %v", gone, err)
	}
	if got := f.executed(); !slices.Equal(got, []string{"device_del", "qom-list", "blockdev-del", "blockdev-del", "blockdev-del"}) {
		t.Fatalf("commands %v", got)
	}

	f = &fakeMonitor{devices: map[string]bool{"ro-dev-3": true}, releaseAfter: -1}
	gone, err = fakeProcess(f).RemoveReadOnlyDisk("3", 30*time.Millisecond)
	if !errors.Is(err, ErrUnplugPending) || gone {
		t.Fatalf("guest never releasing: gone %v, %v", gone, err)
	}
	if slices.Contains(f.executed(), "blockdev-del") {
		t.Error("blockdev-del of a node whose device is still present")
	}

	f = &fakeMonitor{devices: map[string]bool{"ro-dev-3": true}, fail: map[string]bool{"blockdev-del": true}}
	gone, err = fakeProcess(f).RemoveReadOnlyDisk("3", 20*time.Millisecond)
	if err == nil || !gone {
		t.Errorf("failed blockdev-del: gone %v, %v", gone, err)
	}

	f = &fakeMonitor{devices: map[string]bool{}, fail: map[string]bool{"device_del": true}}
	gone, err = fakeProcess(f).RemoveReadOnlyDisk("3", time.Second)
	if err == nil || gone {
		t.Errorf("failed device_del: gone %v, %v", gone, err)
	}
}
