package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// NetnsHolderArg is the argument that makes the shim binary a network
// namespace holder (see HoldNetns).
const NetnsHolderArg = "raksh-netns-holder"

// HoldNetns is the whole life of a netns holder: the shim starts its own
// binary with NetnsHolderArg in a new network namespace, and the process
// waits until its stdin closes. It stands for the container's process in
// the OCI state host-side hooks receive (nerdctl's createRuntime hook sets
// up CNI in /proc/<pid>/ns/net), as the real process is in the VM.
func HoldNetns() {
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// defaultHookTimeout bounds a hook that sets no timeout.
const defaultHookTimeout = 2 * time.Minute

// hostHooks runs the OCI hooks of a container that belong to the host —
// prestart and createRuntime before the container is created (and, for
// the pod's first container, before its VM boots, so that a network a hook
// sets up is attached at boot), poststop when it is deleted — in the shim,
// never in the guest. createContainer, startContainer and poststart hooks
// would have to run in the container's namespaces, which are in the guest;
// the agent drops those and logs it.
type hostHooks struct {
	id, bundle  string
	annotations map[string]string
	hooks       *specs.Hooks
	// holder is a process in a new network namespace standing for the
	// container (when the spec asks for a new network namespace).
	holder   *exec.Cmd
	holderIn io.WriteCloser
}

// newHostHooks prepares the host hooks of a container; nil when it has
// none to run. For a spec asking for a new network namespace it starts a
// netns holder and points the spec's network namespace at it, so that what
// the hooks set up there is attached to the VM.
func newHostHooks(id, bundle string, spec *specs.Spec) (*hostHooks, error) {
	h := spec.Hooks
	if h == nil || len(h.Prestart)+len(h.CreateRuntime)+len(h.Poststop) == 0 {
		return nil, nil
	}
	hh := &hostHooks{id: id, bundle: bundle, annotations: spec.Annotations, hooks: h}
	if spec.Linux == nil {
		return hh, nil
	}
	for i, ns := range spec.Linux.Namespaces {
		if ns.Type != specs.NetworkNamespace || ns.Path != "" {
			continue
		}
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(self, NetnsHolderArg)
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
		in, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start the network namespace holder of %q: %w", id, err)
		}
		hh.holder, hh.holderIn = cmd, in
		spec.Linux.Namespaces[i].Path = fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)
	}
	return hh, nil
}

// pid is the pid hooks are given: the netns holder's, else the VM's.
func (h *hostHooks) pid(vmPid int) int {
	if h.holder != nil {
		return h.holder.Process.Pid
	}
	return vmPid
}

// create runs the prestart and createRuntime hooks; the first failing one
// fails the container.
func (h *hostHooks) create(ctx context.Context, vmPid int) error {
	if h == nil {
		return nil
	}
	st := h.state(specs.StateCreating, vmPid)
	for _, k := range []struct {
		kind  string
		hooks []specs.Hook
	}{{"createRuntime", h.hooks.CreateRuntime}, {"prestart", h.hooks.Prestart}} {
		for _, hk := range k.hooks {
			if err := runHook(ctx, k.kind, hk, st); err != nil {
				return err
			}
		}
	}
	return nil
}

// deleted runs the poststop hooks (failures are logged, as OCI asks) and
// ends the netns holder.
func (h *hostHooks) deleted(ctx context.Context, vmPid int) {
	if h == nil {
		return
	}
	st := h.state(specs.StateStopped, vmPid)
	for _, hk := range h.hooks.Poststop {
		if err := runHook(ctx, "poststop", hk, st); err != nil {
			log.G(ctx).WithError(err).WithField("id", h.id).Warn("poststop hook failed")
		}
	}
	h.stop()
}

// stop ends the netns holder, if any.
func (h *hostHooks) stop() {
	if h == nil || h.holder == nil {
		return
	}
	h.holderIn.Close()
	h.holder.Process.Kill()
	h.holder.Wait()
	h.holder = nil
}

func (h *hostHooks) state(status specs.ContainerState, vmPid int) []byte {
	b, _ := json.Marshal(specs.State{Version: specs.Version, ID: h.id, Status: status, Pid: h.pid(vmPid), Bundle: h.bundle, Annotations: h.annotations})
	return b
}

// runHook runs one hook with the OCI state on its stdin.
func runHook(ctx context.Context, kind string, hk specs.Hook, state []byte) error {
	timeout := defaultHookTimeout
	if hk.Timeout != nil && *hk.Timeout > 0 {
		timeout = time.Duration(*hk.Timeout) * time.Second
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(hctx, hk.Path)
	if len(hk.Args) > 0 {
		cmd.Args = hk.Args
	}
	cmd.Env = hk.Env
	cmd.Stdin = bytes.NewReader(state)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		msg := bytes.TrimSpace(out.Bytes())
		if len(msg) > 512 {
			msg = msg[len(msg)-512:]
		}
		return fmt.Errorf("%s hook %s: %w: %s", kind, hk.Path, err, msg)
	}
	log.G(ctx).WithField("hook", hk.Path).WithField("kind", kind).WithField("elapsed", time.Since(start)).Info("OCI hook ran on the host")
	return nil
}
