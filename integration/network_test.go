//go:build integration

package integration

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/websocket"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/raksh-project/raksh/integration/harness"
)

// The test network: a CNI bridge on a private subnet, no masquerade, no
// route out; traffic stays between the host's bridge and the pods.
var testCNI = &harness.CNI{Bridge: "rknet0", Subnet: "10.199.38.0/24", PortMap: true}

const (
	bridgeIP = "10.199.38.1"
	webPort  = 8080
	hostPort = 18080
	webBody  = "hello-from-raksh-pod"
)

// netEnv is a containerd with the CNI network and the busybox images.
type netEnv struct {
	h   *harness.Containerd
	rs  cri.RuntimeServiceClient
	ctx context.Context
}

func startNetEnv(t testing.TB) *netEnv {
	h, rs := startCRI(t, harness.Options{CNI: testCNI})
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	t.Cleanup(cancel)
	return &netEnv{h: h, rs: rs, ctx: ctx}
}

type testPod struct {
	id, ip string
	cfg    *cri.PodSandboxConfig
}

// runPod starts a pod on handler ("" is runc) with the given containers
// (name → shell command).
func (e *netEnv) runPod(t testing.TB, name, handler string, ports []*cri.PortMapping, containers ...[2]string) (*testPod, []string) {
	t.Helper()
	cfg := &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: name, Uid: "uid-" + name, Namespace: "raksh-net"},
		Hostname:     name,
		PortMappings: ports,
		Linux:        &cri.LinuxPodSandboxConfig{},
	}
	start := time.Now()
	sb, err := e.rs.RunPodSandbox(e.ctx, &cri.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
	if err != nil {
		t.Fatalf("RunPodSandbox %s: %v", name, err)
	}
	p := &testPod{id: sb.PodSandboxId, cfg: cfg}
	t.Cleanup(func() {
		ctx := context.Background()
		e.rs.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: p.id})
		e.rs.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: p.id})
	})
	st, err := e.rs.PodSandboxStatus(e.ctx, &cri.PodSandboxStatusRequest{PodSandboxId: p.id})
	if err != nil {
		t.Fatal(err)
	}
	p.ip = st.GetStatus().GetNetwork().GetIp()
	if !strings.HasPrefix(p.ip, "10.199.38.") {
		t.Fatalf("pod %s has IP %q, not one of the test subnet", name, p.ip)
	}
	var ids []string
	for _, c := range containers {
		cc, err := e.rs.CreateContainer(e.ctx, &cri.CreateContainerRequest{
			PodSandboxId: p.id, SandboxConfig: cfg,
			Config: &cri.ContainerConfig{
				Metadata: &cri.ContainerMetadata{Name: c[0]},
				Image:    &cri.ImageSpec{Image: criBusybox},
				Command:  []string{"/bin/sh", "-c", c[1]},
				Linux:    &cri.LinuxContainerConfig{},
			},
		})
		if err != nil {
			t.Fatalf("CreateContainer %s/%s: %v", name, c[0], err)
		}
		if _, err := e.rs.StartContainer(e.ctx, &cri.StartContainerRequest{ContainerId: cc.ContainerId}); err != nil {
			t.Fatalf("StartContainer %s/%s: %v", name, c[0], err)
		}
		ids = append(ids, cc.ContainerId)
	}
	t.Logf("pod %s (%s) at %s running in %s", name, orRunc(handler), p.ip, time.Since(start).Round(time.Millisecond))
	return p, ids
}

func orRunc(h string) string {
	if h == "" {
		return "runc"
	}
	return h
}

// webServer serves webBody on webPort with busybox httpd.
var webServer = fmt.Sprintf("mkdir -p /tmp/www && echo %s > /tmp/www/index.html && exec /bin/busybox httpd -f -p %d -h /tmp/www", webBody, webPort)

// fetch GETs url from the host with Go's client, retrying while the server
// comes up.
func fetch(t testing.TB, url string, within time.Duration) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	deadline := time.Now().Add(within)
	for {
		resp, err := c.Get(url)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == 200 {
				return string(b)
			}
			err = fmt.Errorf("status %d, %v", resp.StatusCode, rerr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// execOut runs cmd in container id and returns its stdout.
func (e *netEnv) execOut(t testing.TB, id string, cmd string) string {
	t.Helper()
	r, err := e.rs.ExecSync(e.ctx, &cri.ExecSyncRequest{ContainerId: id, Cmd: []string{"/bin/sh", "-c", cmd}, Timeout: 90})
	if err != nil {
		t.Fatalf("ExecSync %q: %v", cmd, err)
	}
	if r.ExitCode != 0 {
		t.Fatalf("ExecSync %q: exit %d, stdout %q stderr %q", cmd, r.ExitCode, r.Stdout, r.Stderr)
	}
	return string(r.Stdout)
}

// httpGetCmd fetches http://addr/ with busybox nc (busybox wget is not used:
// the static build crashed in pods before).
func httpGetCmd(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 20 %s %s", host, port)
}

// tapsAndFilters lists the raksh taps and ingress qdiscs in a netns.
func tapsAndFilters(t testing.TB, nsPath string) (taps, ingress []string) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, nil // gone: nothing is left in it
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, _ := h.LinkList()
	for _, l := range links {
		if l.Type() == "tuntap" {
			taps = append(taps, l.Attrs().Name)
		}
		qs, _ := h.QdiscList(l)
		for _, q := range qs {
			if q.Type() == "ingress" {
				ingress = append(ingress, l.Attrs().Name)
			}
		}
	}
	return taps, ingress
}

// sandboxNetns returns the pod's netns path from the sandbox's spec.
func (e *netEnv) sandboxNetns(t testing.TB, p *testPod) string {
	st, err := e.rs.PodSandboxStatus(e.ctx, &cri.PodSandboxStatusRequest{PodSandboxId: p.id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	info := st.GetInfo()["info"]
	i := strings.Index(info, `"/var/run/netns/`)
	if i < 0 {
		i = strings.Index(info, `"/run/netns/`)
	}
	if i < 0 {
		t.Fatalf("no netns path in the sandbox info")
	}
	path := info[i+1:]
	return path[:strings.IndexByte(path, '"')]
}

// TestPodNetwork: a raksh pod serving HTTP is reached at its pod IP from
// the host, from a runc pod and from another raksh pod; its two containers
// share the network; CRI PortForward and a hostPort reach it; removing the
// pod leaves no tap or filter.
func TestPodNetwork(t *testing.T) {
	e := startNetEnv(t)
	web, ids := e.runPod(t, "web", "raksh", []*cri.PortMapping{{Protocol: cri.Protocol_TCP, ContainerPort: webPort, HostPort: hostPort, HostIp: bridgeIP}},
		[2]string{"httpd", webServer}, [2]string{"side", "exec sleep 600"})
	nsPath := e.sandboxNetns(t, web)
	if taps, ingress := tapsAndFilters(t, nsPath); len(taps) != 1 || len(ingress) != 2 {
		t.Fatalf("pod netns %s: taps %v, ingress qdiscs on %v; want one tap and redirects on it and eth0", nsPath, taps, ingress)
	}

	t.Run("host to pod IP", func(t *testing.T) {
		if got := fetch(t, fmt.Sprintf("http://%s:%d/", web.ip, webPort), 2*time.Minute); strings.TrimSpace(got) != webBody {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("containers share the network", func(t *testing.T) {
		out := e.execOut(t, ids[1], "/bin/busybox ip -o addr show eth0; "+httpGetCmd(fmt.Sprintf("127.0.0.1:%d", webPort)))
		if !strings.Contains(out, web.ip+"/24") || !strings.Contains(out, webBody) {
			t.Fatalf("side container: %q", out)
		}
	})
	t.Run("hostPort on the bridge IP", func(t *testing.T) {
		if got := fetch(t, fmt.Sprintf("http://%s:%d/", bridgeIP, hostPort), 30*time.Second); strings.TrimSpace(got) != webBody {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("PortForward", func(t *testing.T) {
		got := portForwardGET(t, e, web.id, webPort)
		if !strings.Contains(got, webBody) {
			t.Fatalf("port-forward answer %q", got)
		}
	})
	t.Run("from a runc pod", func(t *testing.T) {
		_, rids := e.runPod(t, "client-runc", "", nil, [2]string{"c", "exec sleep 600"})
		if out := e.execOut(t, rids[0], httpGetCmd(fmt.Sprintf("%s:%d", web.ip, webPort))); !strings.Contains(out, webBody) {
			t.Fatalf("runc pod got %q", out)
		}
	})
	t.Run("from another raksh pod", func(t *testing.T) {
		_, rids := e.runPod(t, "client-raksh", "raksh", nil, [2]string{"c", "exec sleep 600"})
		if out := e.execOut(t, rids[0], httpGetCmd(fmt.Sprintf("%s:%d", web.ip, webPort))); !strings.Contains(out, webBody) {
			t.Fatalf("raksh pod got %q", out)
		}
	})

	if _, err := e.rs.StopPodSandbox(e.ctx, &cri.StopPodSandboxRequest{PodSandboxId: web.id}); err != nil {
		t.Fatal(err)
	}
	if taps, ingress := tapsAndFilters(t, nsPath); len(taps)+len(ingress) != 0 {
		t.Fatalf("after StopPodSandbox: taps %v, ingress qdiscs on %v", taps, ingress)
	}
	if _, err := e.rs.RemovePodSandbox(e.ctx, &cri.RemovePodSandboxRequest{PodSandboxId: web.id}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(nsPath); err == nil {
		t.Errorf("netns %s still exists after RemovePodSandbox", nsPath)
	}
}

// portForwardGET sends an HTTP GET through CRI PortForward, speaking the
// streaming server's websocket port-forward protocol (v4.channel.k8s.io:
// per port a data channel 0 and an error channel 1, each starting with the
// port as two little-endian bytes; every frame starts with its channel).
func portForwardGET(t *testing.T, e *netEnv, podID string, port int32) string {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		got, err := tryPortForward(e, podID, port)
		if err == nil && strings.Contains(got, "200 OK") {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("port-forward: %v (got %q)", err, got)
		}
		time.Sleep(time.Second) // the shim mirrors guest listeners every second
	}
}

func tryPortForward(e *netEnv, podID string, port int32) (string, error) {
	pf, err := e.rs.PortForward(e.ctx, &cri.PortForwardRequest{PodSandboxId: podID, Port: []int32{port}})
	if err != nil {
		return "", err
	}
	u := pf.Url
	if !strings.Contains(u, "?") {
		u += "?"
	}
	u += fmt.Sprintf("&port=%d", port)
	cfg, err := websocket.NewConfig(strings.Replace(u, "http://", "ws://", 1), "http://127.0.0.1/")
	if err != nil {
		return "", err
	}
	cfg.Protocol = []string{"v4.channel.k8s.io"}
	ws, err := websocket.DialConfig(cfg)
	if err != nil {
		return "", err
	}
	defer ws.Close()
	ws.SetDeadline(time.Now().Add(30 * time.Second))
	if err := websocket.Message.Send(ws, append([]byte{0}, "GET / HTTP/1.0\r\n\r\n"...)); err != nil {
		return "", err
	}
	var data, errs []byte
	seen := map[byte]int{}
	for {
		var msg []byte
		if err := websocket.Message.Receive(ws, &msg); err != nil {
			break
		}
		if len(msg) == 0 {
			continue
		}
		ch, body := msg[0], msg[1:]
		if seen[ch] == 0 && len(body) >= 2 {
			if binary.LittleEndian.Uint16(body) != uint16(port) {
				return "", fmt.Errorf("channel %d announced port %d", ch, binary.LittleEndian.Uint16(body))
			}
			body = body[2:]
		}
		seen[ch]++
		switch ch {
		case 0:
			data = append(data, body...)
		case 1:
			errs = append(errs, body...)
		}
		if strings.Contains(string(data), webBody) {
			break
		}
	}
	if len(errs) > 0 {
		return string(data), fmt.Errorf("port-forward error channel: %s", errs)
	}
	return string(data), nil
}

// TestPodNetworkBadInput: a pod netns holding an interface the runtime
// cannot attach (a vxlan) fails the pod with an error naming it and leaves
// no tap, filter or VM behind; so does a lone container whose netns path
// does not exist.
func TestPodNetworkBadInput(t *testing.T) {
	h := startWithBusybox(t, harness.Options{})
	// A netns with a veth (as CNI leaves it) and a vxlan.
	name := fmt.Sprintf("rknet-bad-%d", os.Getpid())
	nsPath := filepath.Join("/var/run/netns", name)
	makeBadNetns(t, name)
	out, err := h.Ctr("run", "--rm", "--runtime", rakshRuntime, "--with-ns", "network:"+nsPath, busyboxRef, "badnet", "true")
	if err == nil || !strings.Contains(err.Error()+out, "vxlan0") || !strings.Contains(err.Error()+out, `"vxlan"`) {
		t.Fatalf("vxlan in the pod netns: err %v, output %q; want a failure naming vxlan0 and its type", err, out)
	}
	if taps, ingress := tapsAndFilters(t, nsPath); len(taps)+len(ingress) != 0 {
		t.Fatalf("left behind: taps %v, ingress qdiscs on %v", taps, ingress)
	}
	waitNoQEMU(t, h)

	missing := "/var/run/netns/rknet-missing-netns"
	out, err = h.Ctr("run", "--rm", "--runtime", rakshRuntime, "--with-ns", "network:"+missing, busyboxRef, "nonet", "true")
	if err == nil || !strings.Contains(err.Error()+out, missing) {
		t.Fatalf("missing netns: err %v, output %q; want a failure naming %s", err, out, missing)
	}
	waitNoQEMU(t, h)
}

func makeBadNetns(t *testing.T, name string) {
	t.Helper()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	done := make(chan error, 1)
	go func() {
		// A locked thread: if it cannot return to the host netns it ends
		// with the goroutine instead of going back to the pool.
		goruntime.LockOSThread()
		ns, err := netns.NewNamed(name)
		if err != nil {
			if netns.Set(orig) == nil {
				goruntime.UnlockOSThread()
			}
			done <- err
			return
		}
		defer ns.Close()
		h, err := netlink.NewHandleAt(ns)
		if err == nil {
			defer h.Close()
			veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "veth-rkpeer"}
			if err = h.LinkAdd(veth); err == nil {
				err = h.LinkAdd(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "vxlan0"}, VxlanId: 42, Port: 4789})
			}
		}
		if serr := netns.Set(orig); serr != nil {
			done <- serr
			return
		}
		goruntime.UnlockOSThread()
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.DeleteNamed(name) })
}
