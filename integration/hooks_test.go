//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vishvananda/netlink"

	"github.com/raksh-project/raksh/integration/harness"
)

// cniHook is an OCI hook doing what nerdctl's createRuntime/poststop hooks
// do: CNI ADD (or DEL, $1) of the bridge plugin in /proc/<pid>/ns/net of
// the OCI state it reads on stdin, its result written to $DIR/<cmd>.json.
const cniHook = `#!/bin/sh
state=$(cat)
pid=$(printf '%s' "$state" | sed -n 's/.*"pid":\([0-9][0-9]*\).*/\1/p')
id=$(printf '%s' "$state" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
status=$(printf '%s' "$state" | sed -n 's/.*"status":"\([^"]*\)".*/\1/p')
echo "$status $pid" > "$DIR/$1.state"
CNI_COMMAND=$1 CNI_CONTAINERID=$id CNI_NETNS=/proc/$pid/ns/net CNI_IFNAME=eth0 CNI_PATH=$CNI_PATH \
	exec "$CNI_PATH/bridge" < "$DIR/net.conf" > "$DIR/$1.json"
`

// TestHostHooksCNI: a lone container whose spec carries createRuntime and
// poststop hooks (as nerdctl run --net bridge sets up) has them run in the
// shim with the OCI state naming a process in the container's new network
// namespace; the network the hook sets up there is attached to the VM (the
// container serves HTTP at the CNI address); poststop runs CNI DEL.
func TestHostHooksCNI(t *testing.T) {
	h := startWithBusybox(t, harness.Options{})
	dir := t.TempDir()
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "rkhook", "type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.199.38.0/24", "rangeStart": "10.199.38.200", "rangeEnd": "10.199.38.250"}]], "dataDir": "/run/raksh-test-cni/hook"}}`, testCNI.Bridge)
	hook := filepath.Join(dir, "cni-hook")
	if err := os.WriteFile(filepath.Join(dir, "net.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hook, []byte(cniHook), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(testCNI.Bridge); err == nil {
			netlink.LinkDel(l)
		}
		os.RemoveAll("/run/raksh-test-cni/hook")
	})
	env := []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DIR=" + dir, "CNI_PATH=" + harness.CNIBinDir()}

	c, err := containerd.New(h.Address, containerd.WithDefaultNamespace("default"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), 5*time.Minute)
	defer cancel()
	img, err := c.GetImage(ctx, busyboxRef)
	if err != nil {
		t.Fatal(err)
	}
	withHooks := func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Hooks = &specs.Hooks{
			CreateRuntime: []specs.Hook{{Path: hook, Args: []string{hook, "ADD"}, Env: env}},
			Poststop:      []specs.Hook{{Path: hook, Args: []string{hook, "DEL"}, Env: env}},
		}
		return nil
	}
	ctr, err := c.NewContainer(ctx, "hookcni", containerd.WithNewSnapshot("hookcni", img), containerd.WithRuntime(rakshRuntime, nil),
		containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs("/bin/sh", "-c", webServer), withHooks))
	if err != nil {
		t.Fatal(err)
	}
	defer ctr.Delete(context.WithoutCancel(ctx), containerd.WithSnapshotCleanup)
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatalf("create task: %v", err)
	}
	st := readFile(t, filepath.Join(dir, "ADD.state"))
	if !strings.HasPrefix(st, "creating ") {
		t.Fatalf("createRuntime hook got state %q, want status creating", st)
	}
	var res struct {
		IPs []struct{ Address string } `json:"ips"`
	}
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(dir, "ADD.json"))), &res); err != nil || len(res.IPs) == 0 {
		t.Fatalf("CNI result: %v %+v", err, res)
	}
	ip, _, _ := strings.Cut(res.IPs[0].Address, "/")
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got := fetch(t, fmt.Sprintf("http://%s:%d/", ip, webPort), 2*time.Minute); strings.TrimSpace(got) != webBody {
		t.Fatalf("got %q", got)
	}
	exit, _ := task.Wait(ctx)
	task.Kill(ctx, 9)
	<-exit
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if st := readFile(t, filepath.Join(dir, "DEL.state")); !strings.HasPrefix(st, "stopped ") {
		t.Fatalf("poststop hook got state %q, want status stopped", st)
	}
	waitNoQEMU(t, h)
}
