package qemu

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"
)

// fakeQMP serves QMP on a unix socket the way QEMU does when events are
// broadcast: an event right after qmp_capabilities' reply is sent before
// it, and every reply is surrounded by events. "big" answers with more
// than 64 KiB on one line; "fail" answers with a QMP error.
func fakeQMP(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	event := func(n int) string {
		return fmt.Sprintf(`{"timestamp": {"seconds": %d, "microseconds": 0}, "event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/ro-dev-%d"}}`, n, n)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				w := bufio.NewWriter(c)
				fmt.Fprintln(w, `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}`)
				w.Flush()
				dec := json.NewDecoder(c)
				for n := 0; ; n++ {
					var cmd struct {
						Execute string `json:"execute"`
					}
					if err := dec.Decode(&cmd); err != nil {
						return
					}
					var reply string
					switch cmd.Execute {
					case "qmp_capabilities", "quit":
						reply = `{"return": {}}`
					case "query-status":
						reply = `{"return": {"status": "running", "singlestep": false, "running": true}}`
					case "big":
						reply = `{"return": ["` + strings.Repeat("n", 200<<10) + `"]}`
					default:
						reply = `{"error": {"class": "GenericError", "desc": "no such command"}}`
					}
					fmt.Fprintln(w, event(n))
					fmt.Fprintln(w, reply)
					fmt.Fprintln(w, event(n+1000))
					w.Flush()
				}
			}(c)
		}
	}()
	return sock
}

func TestQMPConnSkipsEvents(t *testing.T) {
	sock := fakeQMP(t)
	c := NewQMPConn(sock, 5*time.Second)
	if err := c.Connect(); err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect()
	for i := 0; i < 50; i++ {
		out, err := c.Run([]byte(`{"execute": "big"}`))
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		var r struct {
			Return []string `json:"return"`
		}
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		if len(r.Return) != 1 || len(r.Return[0]) != 200<<10 {
			t.Fatalf("run %d: reply of %d bytes is not the command's", i, len(out))
		}
	}
	// go-qemu's typed API runs on it.
	st, err := raw.NewMonitor(c).QueryStatus()
	if err != nil || st.Status != raw.RunStateRunning {
		t.Fatalf("query-status: %+v, %v", st, err)
	}
	if _, err := c.Run([]byte(`{"execute": "nope"}`)); err == nil || !strings.Contains(err.Error(), "no such command") {
		t.Fatalf("error reply: %v, want the QMP error", err)
	}
}

func TestQMPConnNoGreeting(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "x.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			fmt.Fprintln(c, `{"hello": 1}`)
			c.Close()
		}
	}()
	if err := NewQMPConn(sock, 2*time.Second).Connect(); err == nil || !strings.Contains(err.Error(), "greeting") {
		t.Fatalf("Connect to a non-QMP socket: %v, want a greeting error", err)
	}
}
