// Command fakerunc is a fake runc for the agent's and the shim's tests
// (agenttest.NewRuntime builds it): it speaks runc's command line to
// containerd's process package and runs a container's process as a plain
// host process (no isolation) in the rootfs directory, each process with a
// supervisor that reports its exit to the test's exits socket
// (<root>/exits.sock), as the agent's reaper would. Terminals are not
// supported.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func main() {
	os.Exit(fakeMain(os.Args[1:]))
}

// fakeMain runs one fake runc command: [global flags] command [flags] id.
func fakeMain(args []string) int {
	f := &fake{}
	var err error
	switch {
	case len(args) > 0 && args[0] == "fake-supervise":
		err = supervise()
	case len(args) > 0 && args[0] == "fake-init":
		err = initProcess()
	default:
		err = f.run(args)
	}
	if err != nil {
		f.fail(err)
		return 1
	}
	return 0
}

type fake struct {
	root, log string
}

// fail reports err as runc does: a JSON line in the log file (which the
// process package reads back) and on stderr.
func (f *fake) fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	if f.log == "" {
		return
	}
	b, _ := json.Marshal(map[string]string{"level": "error", "msg": err.Error(), "time": time.Now().Format(time.RFC3339)})
	if lf, lerr := os.OpenFile(f.log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); lerr == nil {
		lf.Write(append(b, '\n'))
		lf.Close()
	}
}

// flags splits --name value / --name options off args.
func flags(args []string) (map[string]string, []string) {
	fl := map[string]string{}
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			rest = append(rest, a)
			continue
		}
		name := strings.TrimPrefix(a, "--")
		switch name {
		case "root", "log", "log-format", "bundle", "pid-file", "console-socket", "process", "format":
			if i+1 < len(args) {
				fl[name] = args[i+1]
				i++
			}
		default:
			fl[name] = "true"
		}
	}
	return fl, rest
}

func (f *fake) run(args []string) error {
	fl, rest := flags(args)
	f.root, f.log = fl["root"], fl["log"]
	if len(rest) < 2 {
		return fmt.Errorf("fake runc: usage: [flags] command id: %q", args)
	}
	cmd, id := rest[0], rest[1]
	if f.root == "" || id == "" || strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("fake runc: bad root %q or id %q", f.root, id)
	}
	dir := filepath.Join(f.root, id)
	if _, ok := fl["console-socket"]; ok {
		return errors.New("fake runc: terminals are not supported")
	}
	switch cmd {
	case "create":
		return f.create(dir, fl["bundle"], fl["pid-file"])
	case "start":
		return start(dir)
	case "exec":
		return f.exec(dir, fl["process"], fl["pid-file"])
	case "kill":
		if len(rest) < 3 {
			return errors.New("fake runc: kill: no signal")
		}
		sig, err := strconv.Atoi(rest[2])
		if err != nil {
			return err
		}
		return kill(dir, syscall.Signal(sig), fl["all"] == "true")
	case "delete":
		return del(dir, fl["force"] == "true")
	case "ps":
		return ps(dir)
	default:
		return fmt.Errorf("fake runc: %s is not supported", cmd)
	}
}

func exists(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("container does not exist: %w", err)
	}
	return nil
}

func (f *fake) create(dir, bundle, pidFile string) error {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return err
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return err
	}
	if spec.Process == nil || len(spec.Process.Args) == 0 {
		return errors.New("fake runc: the process has no args")
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("container exists: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bundle"), []byte(bundle), 0o600); err != nil {
		return err
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "start"), 0o600); err != nil {
		return err
	}
	return f.spawn(dir, spec.Process, filepath.Join(bundle, "rootfs"), filepath.Join(dir, "start"), pidFile, true)
}

func (f *fake) exec(dir, processFile, pidFile string) error {
	if err := exists(dir); err != nil {
		return err
	}
	b, err := os.ReadFile(processFile)
	if err != nil {
		return err
	}
	var p specs.Process
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	if len(p.Args) == 0 {
		return errors.New("fake runc: the process has no args")
	}
	bundle, err := os.ReadFile(filepath.Join(dir, "bundle"))
	if err != nil {
		return err
	}
	return f.spawn(dir, &p, filepath.Join(string(bundle), "rootfs"), "", pidFile, false)
}

// spawn starts a supervisor running p and writes p's pid to pidFile.
func (f *fake) spawn(dir string, p *specs.Process, cwd, gate, pidFile string, isInit bool) error {
	pj, err := json.Marshal(p)
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	self, _ := os.Executable()
	cmd := exec.Command(self, "fake-supervise")
	cmd.Env = []string{"FAKE_PROCESS=" + string(pj), "FAKE_CWD=" + cwd, "FAKE_GATE=" + gate,
		"FAKE_DIR=" + dir, "FAKE_EXITS=" + filepath.Join(f.root, "exits.sock"), "FAKE_INIT=" + strconv.FormatBool(isInit)}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return err
	}
	w.Close()
	os.Mkdir(filepath.Join(dir, "sups"), 0o700) // not MkdirAll: never recreate a removed state root
	os.WriteFile(filepath.Join(dir, "sups", strconv.Itoa(cmd.Process.Pid)), nil, 0o600)
	cmd.Process.Release()
	var pid int
	if _, err := fmt.Fscan(r, &pid); err != nil {
		return fmt.Errorf("fake runc: the supervisor did not start the process: %w", err)
	}
	return os.WriteFile(pidFile, []byte(strconv.Itoa(pid)), 0o600)
}

// supervise starts the process (gated until start for an init), reports its
// pid on fd 3, waits for it and reports its exit to the exits socket.
func supervise() error {
	dir := os.Getenv("FAKE_DIR")
	defer os.Remove(filepath.Join(dir, "sups", strconv.Itoa(os.Getpid())))
	self, _ := os.Executable()
	cmd := exec.Command(self, "fake-init")
	cmd.Env = []string{"FAKE_PROCESS=" + os.Getenv("FAKE_PROCESS"),
		"FAKE_CWD=" + os.Getenv("FAKE_CWD"), "FAKE_GATE=" + os.Getenv("FAKE_GATE")}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	report := os.NewFile(3, "pid")
	if err := cmd.Start(); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	os.Mkdir(filepath.Join(dir, "pids"), 0o700) // not MkdirAll: never recreate a removed state root
	os.WriteFile(filepath.Join(dir, "pids", strconv.Itoa(pid)), nil, 0o600)
	if os.Getenv("FAKE_INIT") == "true" {
		os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(pid)), 0o600)
	}
	fmt.Fprintln(report, pid)
	report.Close()
	// Hold none of the process's stdio: its output ends when it does.
	if null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
		for fd := 0; fd < 3; fd++ {
			syscall.Dup2(int(null.Fd()), fd)
		}
	}
	cmd.Wait()
	status := cmd.ProcessState.ExitCode()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		status = 128 + int(ws.Signal())
	}
	os.Remove(filepath.Join(dir, "pids", strconv.Itoa(pid)))
	if os.Getenv("FAKE_INIT") == "true" {
		os.WriteFile(filepath.Join(dir, "stopped"), nil, 0o600)
	}
	c, err := net.Dial("unix", os.Getenv("FAKE_EXITS"))
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = fmt.Fprintf(c, "%d %d\n", pid, status)
	return err
}

// initProcess waits for start (if gated) and becomes the process.
func initProcess() error {
	var p specs.Process
	if err := json.Unmarshal([]byte(os.Getenv("FAKE_PROCESS")), &p); err != nil {
		return err
	}
	if gate := os.Getenv("FAKE_GATE"); gate != "" {
		g, err := os.OpenFile(gate, os.O_RDONLY, 0)
		if err != nil {
			return err
		}
		if _, err := g.Read(make([]byte, 1)); err != nil {
			return fmt.Errorf("fake runc: never started: %w", err)
		}
		g.Close()
	}
	if cwd := os.Getenv("FAKE_CWD"); cwd != "" {
		if err := os.Chdir(cwd); err != nil {
			return err
		}
	}
	for _, e := range p.Env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			os.Setenv("PATH", v)
		}
	}
	path, err := exec.LookPath(p.Args[0])
	if err != nil {
		return err
	}
	return syscall.Exec(path, p.Args, p.Env)
}

func initPid(dir string) (int, error) {
	if err := exists(dir); err != nil {
		return 0, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(string(b))
}

func start(dir string) error {
	if err := exists(dir); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(dir, "started"), 0o700); err != nil {
		return errors.New("cannot start an already running container")
	}
	g, err := os.OpenFile(filepath.Join(dir, "start"), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer g.Close()
	_, err = g.Write([]byte{1})
	return err
}

func kill(dir string, sig syscall.Signal, all bool) error {
	pid, err := initPid(dir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, "stopped")); err == nil && !all {
		return errors.New("container not running")
	}
	if all {
		pids, _ := filepath.Glob(filepath.Join(dir, "pids", "*"))
		for _, p := range pids {
			if n, err := strconv.Atoi(filepath.Base(p)); err == nil {
				syscall.Kill(-n, sig)
			}
		}
		return nil
	}
	return syscall.Kill(pid, sig)
}

func del(dir string, force bool) error {
	pid, err := initPid(dir)
	if err != nil {
		return err
	}
	_, stopped := os.Stat(filepath.Join(dir, "stopped"))
	_, started := os.Stat(filepath.Join(dir, "started"))
	switch {
	case stopped == nil:
	case started != nil || force:
		// runc kills a created container's init; --force a running one.
		syscall.Kill(pid, syscall.SIGKILL)
	default:
		return errors.New("cannot delete container that is not stopped")
	}
	return os.RemoveAll(dir)
}

func ps(dir string) error {
	if err := exists(dir); err != nil {
		return err
	}
	pids := []int{}
	files, _ := filepath.Glob(filepath.Join(dir, "pids", "*"))
	for _, p := range files {
		if n, err := strconv.Atoi(filepath.Base(p)); err == nil {
			pids = append(pids, n)
		}
	}
	return json.NewEncoder(os.Stdout).Encode(pids)
}
