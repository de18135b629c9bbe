package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// qmpCommandTimeout bounds one QMP command's answer: a QEMU that does not
// answer within it is wedged.
const qmpCommandTimeout = time.Minute

// QMPConn is one QMP connection to a QEMU monitor socket. It implements
// go-qemu's qmp.Monitor, so go-qemu's typed API (raw.Monitor) runs on it.
//
// It replaces go-qemu's SocketMonitor, whose reader goroutine hands Run the
// bufio.Scanner's buffer and overwrites it with the next line while Run
// still decodes it (digitalocean/go-qemu#226, open). QEMU sends every event
// (DEVICE_DELETED of an unplug, …) to every monitor, so a reply and an event
// arriving together garbled the reply: TestErofsLayerDetach failed with
// "invalid character 'n' after top-level value" while layer disks were
// unplugged in the background. SocketMonitor also takes an event arriving
// right after qmp_capabilities for that command's reply (go-qemu#210), and
// its lines are limited to 64 KiB. QMPConn reads replies with its own JSON
// decoder, one command at a time, and skips events.
type QMPConn struct {
	socket  string
	timeout time.Duration

	mu   sync.Mutex
	conn net.Conn
	dec  *json.Decoder
}

// NewQMPConn returns an unconnected QMP connection to the unix socket;
// timeout bounds the dial and the greeting.
func NewQMPConn(socket string, timeout time.Duration) *QMPConn {
	return &QMPConn{socket: socket, timeout: timeout}
}

var _ qmp.Monitor = (*QMPConn)(nil)

// Connect dials the socket, reads QEMU's greeting and negotiates
// capabilities (none).
func (c *QMPConn) Connect() error {
	conn, err := net.DialTimeout("unix", c.socket, c.timeout)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(c.timeout))
	dec := json.NewDecoder(conn)
	var greeting struct {
		QMP json.RawMessage `json:"QMP"`
	}
	if err := dec.Decode(&greeting); err != nil || greeting.QMP == nil {
		conn.Close()
		if err == nil {
			err = errors.New("no QMP greeting")
		}
		return fmt.Errorf("qmp greeting on %s: %w", c.socket, err)
	}
	c.mu.Lock()
	c.conn, c.dec = conn, dec
	c.mu.Unlock()
	if _, err := c.Run([]byte(`{"execute":"qmp_capabilities"}`)); err != nil {
		c.Disconnect()
		return err
	}
	return nil
}

// Disconnect closes the connection.
func (c *QMPConn) Disconnect() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn = nil
	return err
}

// Run sends one command and returns its reply (the whole JSON object,
// owned by the caller), skipping events; a QMP error reply is an error.
func (c *QMPConn) Run(command []byte) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil, errors.New("qmp: not connected")
	}
	c.conn.SetDeadline(time.Now().Add(qmpCommandTimeout))
	if _, err := c.conn.Write(command); err != nil {
		return nil, err
	}
	for {
		var msg json.RawMessage // Decode stores a copy
		if err := c.dec.Decode(&msg); err != nil {
			return nil, fmt.Errorf("qmp reply: %w", err)
		}
		var head struct {
			Event string `json:"event"`
			Error *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
		}
		if err := json.Unmarshal(msg, &head); err != nil {
			return nil, fmt.Errorf("qmp reply: %w", err)
		}
		if head.Event != "" {
			continue
		}
		if head.Error != nil {
			return nil, fmt.Errorf("%s: %s", head.Error.Class, head.Error.Desc)
		}
		return msg, nil
	}
}

// Events is not supported: QMPConn skips events.
func (c *QMPConn) Events(context.Context) (<-chan qmp.Event, error) {
	return nil, qmp.ErrEventsNotSupported
}
