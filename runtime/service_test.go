package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/fifo"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent"
	"github.com/raksh-project/raksh/agent/agenttest"
	"github.com/raksh-project/raksh/internal/transport"
	"github.com/raksh-project/raksh/runtime/vm"
	"github.com/raksh-project/raksh/runtime/vm/qemu"
)

// fakeVM runs the real agent service in-process, over a real transport on
// a unix socket, with a runtime that runs plain host processes.
type fakeVM struct {
	t      *testing.T
	dir    string
	sess   transport.Session
	guest  transport.Session
	client *ttrpc.Client
	done   chan struct{}
	once   sync.Once
	ready  chan struct{} // closed once guest is set (or the guest end failed)
	// opts, if set, returns extra agent options (proxy dialer, image keys)
	// given the guest end of the session.
	opts func(guest func() transport.Session) []agent.Opt
	// agent is the agent's service once the guest end is up.
	agent atomic.Pointer[agent.Service]
	mu    sync.Mutex // guards guest, set once the guest end is up
}

func (f *fakeVM) guestSession() transport.Session {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.guest
}

func (f *fakeVM) Start(ctx context.Context) error {
	sock := filepath.Join(f.dir, "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	defer l.Close()
	f.ready = make(chan struct{})
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(f.ready)
			return
		}
		s, err := transport.Server(ctx, c, 5*time.Millisecond)
		if err != nil {
			close(f.ready)
			return
		}
		f.mu.Lock()
		f.guest = s
		f.mu.Unlock()
		close(f.ready)
		var opts []agent.Opt
		if f.opts != nil {
			opts = f.opts(func() transport.Session { return s })
		}
		svc := agent.NewService(filepath.Join(f.dir, "guest"), agenttest.NewRuntime(f.t), opts...)
		f.agent.Store(svc)
		agent.Serve(context.Background(), s, svc)
	}()
	c, err := net.Dial("unix", sock)
	if err != nil {
		return err
	}
	f.sess, err = transport.Client(ctx, c)
	if err != nil {
		return err
	}
	ctrl, err := f.sess.Open(ctx, transport.ControlStream)
	if err != nil {
		return err
	}
	f.client = ttrpc.NewClient(ctrl)
	<-f.ready
	if f.guestSession() == nil {
		return errors.New("fake VM: the guest end of the transport failed")
	}
	go func() {
		<-f.sess.Done()
		f.once.Do(func() { close(f.done) })
	}()
	return nil
}

func (f *fakeVM) Client() *ttrpc.Client { return f.client }
func (f *fakeVM) StartStream(ctx context.Context, name string) (net.Conn, error) {
	return f.sess.Open(ctx, name)
}
func (f *fakeVM) AcceptStream() (string, net.Conn, error) { return f.sess.Accept() }
func (f *fakeVM) Shutdown(ctx context.Context) error {
	if f.sess != nil {
		f.sess.Close()
	}
	f.once.Do(func() { close(f.done) })
	return nil
}
func (f *fakeVM) Done() <-chan struct{} { return f.done }
func (f *fakeVM) Pid() int              { return os.Getpid() }

// kill simulates the VM dying under the shim.
func (f *fakeVM) kill() {
	f.guestSession().Close()
	f.sess.Close()
}

type recorder struct {
	mu     sync.Mutex
	topics []string
	events []any
}

func (r *recorder) Publish(ctx context.Context, topic string, event events.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.topics = append(r.topics, topic)
	r.events = append(r.events, event)
	return nil
}
func (r *recorder) Close() error { return nil }

func (r *recorder) waitTopics(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		got := append([]string(nil), r.topics...)
		r.mu.Unlock()
		if strings.Join(got, " ") == strings.Join(want, " ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("events %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type env struct {
	vms int // VMs the factory created
	svc *Service
	vm  *fakeVM
	rec *recorder
	dir string
	ctx context.Context
}

func newEnv(t *testing.T) *env {
	dir := t.TempDir()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	ctx, sd := shutdown.WithShutdown(ctx)
	t.Cleanup(sd.Shutdown)
	rec := &recorder{}
	fv := &fakeVM{t: t, dir: dir, done: make(chan struct{})}
	cfgPath := filepath.Join(dir, "runtime.toml")
	os.WriteFile(cfgPath, []byte("accel = \"tcg\"\n"), 0o644)
	t.Setenv(ConfigEnv, cfgPath)
	e := &env{vm: fv, rec: rec, dir: dir, ctx: ctx}
	e.svc = NewService(ctx, "pod", rec, sd, func(context.Context, Config, string, []qemu.NIC) (vm.Instance, error) {
		e.vms++
		return fv, nil
	})
	return e
}

// bundle writes a bundle whose process runs args on the host (fake runtime).
func (e *env) bundle(t *testing.T, id string, annotations map[string]string, args ...string) string {
	b := filepath.Join(e.dir, "bundles", id)
	os.MkdirAll(filepath.Join(b, "rootfs"), 0o755)
	os.WriteFile(filepath.Join(b, "rootfs", "hello.txt"), []byte("from rootfs"), 0o644)
	spec := specs.Spec{Version: specs.Version, Process: &specs.Process{Args: args, Env: []string{"PATH=/usr/bin:/bin"}}, Annotations: annotations}
	data, _ := json.Marshal(spec)
	os.WriteFile(filepath.Join(b, "config.json"), data, 0o644)
	return b
}

func mkfifo(t *testing.T, path string) (io.ReadCloser, chan string) {
	t.Helper()
	r, err := fifo.OpenFifo(context.Background(), path, syscall.O_CREAT|syscall.O_RDONLY|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(r)
		out <- string(b)
	}()
	return r, out
}

func TestLifecycleWithFifos(t *testing.T) {
	e := newEnv(t)
	b := e.bundle(t, "c1", nil, "/bin/sh", "-c", "cat hello.txt; echo; echo to-stderr >&2; read x; echo got-$x; exit 3")
	_, stdout := mkfifo(t, filepath.Join(e.dir, "c1-stdout"))
	_, stderr := mkfifo(t, filepath.Join(e.dir, "c1-stderr"))
	stdinPath := filepath.Join(e.dir, "c1-stdin")
	stdinW, err := fifo.OpenFifo(context.Background(), stdinPath, syscall.O_CREAT|syscall.O_WRONLY|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := e.svc.Create(e.ctx, &taskAPI.CreateTaskRequest{ID: "c1", Bundle: b,
		Stdin: stdinPath, Stdout: filepath.Join(e.dir, "c1-stdout"), Stderr: filepath.Join(e.dir, "c1-stderr")}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	stdinW.Write([]byte("input\n"))
	stdinW.Close()
	w, err := e.svc.Wait(e.ctx, &taskAPI.WaitRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if w.ExitStatus != 3 {
		t.Fatalf("exit status %d, want 3", w.ExitStatus)
	}
	if _, err := e.svc.Delete(e.ctx, &taskAPI.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if got := <-stdout; got != "from rootfs\ngot-input\n" {
		t.Errorf("stdout %q", got)
	}
	if got := <-stderr; got != "to-stderr\n" {
		t.Errorf("stderr %q", got)
	}
	e.rec.waitTopics(t, "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete")
}

func TestExecWithFifos(t *testing.T) {
	e := newEnv(t)
	b := e.bundle(t, "c2", nil, "/bin/sleep", "30")
	if _, err := e.svc.Create(e.ctx, &taskAPI.CreateTaskRequest{ID: "c2", Bundle: b}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "c2"}); err != nil {
		t.Fatal(err)
	}
	_, stdout := mkfifo(t, filepath.Join(e.dir, "e-stdout"))
	_, stderr := mkfifo(t, filepath.Join(e.dir, "e-stderr"))
	proc, _ := json.Marshal(specs.Process{Args: []string{"/bin/sh", "-c", "echo exec-out; exit 4"}})
	if _, err := e.svc.Exec(e.ctx, &taskAPI.ExecProcessRequest{ID: "c2", ExecID: "e1",
		Stdout: filepath.Join(e.dir, "e-stdout"), Stderr: filepath.Join(e.dir, "e-stderr"),
		Spec: &ptypes.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: proc}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "c2", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	w, err := e.svc.Wait(ctx, &taskAPI.WaitRequest{ID: "c2", ExecID: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	if w.ExitStatus != 4 {
		t.Fatalf("exec exit %d, want 4", w.ExitStatus)
	}
	// Output reaches EOF once the process exited, before Delete: ctr task
	// exec waits for it.
	select {
	case got := <-stdout:
		if got != "exec-out\n" {
			t.Errorf("exec stdout %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("exec stdout fifo did not reach EOF after the exit")
	}
	<-stderr
	if _, err := e.svc.Delete(e.ctx, &taskAPI.DeleteRequest{ID: "c2", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Kill(e.ctx, &taskAPI.KillRequest{ID: "c2", Signal: uint32(syscall.SIGKILL)}); err != nil {
		t.Fatal(err)
	}
	w, err = e.svc.Wait(ctx, &taskAPI.WaitRequest{ID: "c2"})
	if err != nil || w.ExitStatus != 128+9 {
		t.Fatalf("after SIGKILL: %v status %d", err, w.GetExitStatus())
	}
	e.rec.waitTopics(t, "/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/exit")
}

func TestVMDeathEndsTasks(t *testing.T) {
	e := newEnv(t)
	b := e.bundle(t, "c3", nil, "/bin/sleep", "30")
	if _, err := e.svc.Create(e.ctx, &taskAPI.CreateTaskRequest{ID: "c3", Bundle: b}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "c3"}); err != nil {
		t.Fatal(err)
	}
	e.vm.kill()
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	w, err := e.svc.Wait(ctx, &taskAPI.WaitRequest{ID: "c3"})
	if err != nil {
		t.Fatal(err)
	}
	if w.ExitStatus == 0 {
		t.Fatal("task in a dead VM exited 0")
	}
	// A new container cannot be created in the dead VM. (Wait may answer
	// from the agent's lost Wait call a moment before the VM reports Done.)
	<-e.vm.Done()
	b2 := e.bundle(t, "c4", nil, "/bin/true")
	_, err = e.svc.Create(e.ctx, &taskAPI.CreateTaskRequest{ID: "c4", Bundle: b2})
	if !errdefs.IsFailedPrecondition(errgrpc.ToNative(err)) {
		t.Fatalf("create in a dead VM: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t)
	if _, err := e.svc.Create(e.ctx, &taskAPI.CreateTaskRequest{ID: "../x", Bundle: e.dir}); !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
		t.Errorf("path-like id: %v", err)
	}
	if _, err := e.svc.Create(e.ctx, &taskAPI.CreateTaskRequest{ID: "nobundle", Bundle: filepath.Join(e.dir, "missing")}); err == nil {
		t.Error("missing bundle accepted")
	}
	if _, err := e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "ghost"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("start of unknown task: %v", err)
	}
	for _, f := range []func() error{
		func() error { _, err := e.svc.Pause(e.ctx, &taskAPI.PauseRequest{}); return err },
		func() error { _, err := e.svc.Checkpoint(e.ctx, &taskAPI.CheckpointTaskRequest{}); return err },
	} {
		if err := f(); !errors.Is(errgrpc.ToNative(err), errdefs.ErrNotImplemented) {
			t.Errorf("want not implemented, got %v", err)
		}
	}
	// The guard refuses a container whose envelope annotation is garbage.
	b := e.bundle(t, "sealed", map[string]string{"io.raksh.envelope": "not-a-jwe"}, "/bin/true")
	if _, err := e.svc.Create(e.ctx, &taskAPI.CreateTaskRequest{ID: "sealed", Bundle: b}); err == nil {
		t.Error("garbage envelope accepted")
	}
	if e.vms != 0 {
		t.Errorf("refused containers booted %d VMs", e.vms)
	}
}

var _ = eventstypes.TaskExit{}

func TestProxyAllowList(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	fv := &fakeVM{t: t, dir: t.TempDir(), done: make(chan struct{})}
	ctx := context.Background()
	if err := fv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	go serveProxy(ctx, fv, map[string]string{"echo": l.Addr().String()})
	// Allowed: bytes round-trip through the host service.
	c, err := fv.guestSession().Open(ctx, "proxy/echo")
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("ping"))
	c.Close()
	b, _ := io.ReadAll(c)
	if string(b) != "ping" {
		t.Fatalf("echo through proxy: %q", b)
	}
	// Not allow-listed: the stream is closed without data.
	c, err = fv.guestSession().Open(ctx, "proxy/elsewhere")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(c)
	if len(b) != 0 {
		t.Fatalf("refused target answered %q", b)
	}
}

// TestCloseIODrainsStdin: ctr calls CloseIO as soon as its input ends, when
// what it wrote may still be in the stdin fifo; the process must read it
// before EOF (as with containerd's runc shim).
func TestCloseIODrainsStdin(t *testing.T) {
	e := newEnv(t)
	b := e.bundle(t, "c5", nil, "/bin/sh", "-c", "read x; echo got-$x")
	_, stdout := mkfifo(t, filepath.Join(e.dir, "c5-stdout"))
	stdinPath := filepath.Join(e.dir, "c5-stdin")
	stdinW, err := fifo.OpenFifo(context.Background(), stdinPath, syscall.O_CREAT|syscall.O_WRONLY|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Create(e.ctx, &taskAPI.CreateTaskRequest{ID: "c5", Bundle: b, Stdin: stdinPath, Stdout: filepath.Join(e.dir, "c5-stdout")}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "c5"}); err != nil {
		t.Fatal(err)
	}
	stdinW.Write([]byte("line\n"))
	stdinW.Close()
	if _, err := e.svc.CloseIO(e.ctx, &taskAPI.CloseIORequest{ID: "c5", Stdin: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Wait(e.ctx, &taskAPI.WaitRequest{ID: "c5"}); err != nil {
		t.Fatal(err)
	}
	if got := <-stdout; got != "got-line\n" {
		t.Fatalf("stdout %q, want got-line", got)
	}
}
