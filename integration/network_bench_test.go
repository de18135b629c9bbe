//go:build integration

package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// benchBytes is what BenchmarkPodNetwork sends host→pod.
const benchBytes = 64 << 20

// sinkServer discards one TCP connection at a time on port 9000 with busybox
// nc; it closes the connection once the sender is done.
const sinkServer = "while true; do /bin/busybox nc -l -p 9000 > /dev/null; done"

// BenchmarkPodNetwork compares a raksh pod with a runc pod on the same CNI
// bridge, in one run: 64 MiB over TCP host→pod, the mean time of a small
// HTTP request (new connection each), and the raksh pod's start time with
// a NIC (pod network) and without (host network, no NIC).
func BenchmarkPodNetwork(b *testing.B) {
	e := startNetEnv(b)
	type result struct {
		mibps, reqMs float64
	}
	res := map[string]result{}
	for _, handler := range []string{"", "raksh"} {
		p, _ := e.runPod(b, "bench-"+orRunc(handler), handler, nil,
			[2]string{"httpd", webServer}, [2]string{"sink", sinkServer})
		fetch(b, fmt.Sprintf("http://%s:%d/", p.ip, webPort), 2*time.Minute)
		mibps := sendMiB(b, net.JoinHostPort(p.ip, "9000"))
		const n = 50
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
		start := time.Now()
		for i := 0; i < n; i++ {
			resp, err := c.Get(fmt.Sprintf("http://%s:%d/", p.ip, webPort))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		res[orRunc(handler)] = result{mibps, float64(time.Since(start).Microseconds()) / 1000 / n}
		e.rs.StopPodSandbox(e.ctx, &cri.StopPodSandboxRequest{PodSandboxId: p.id})
		e.rs.RemovePodSandbox(e.ctx, &cri.RemovePodSandboxRequest{PodSandboxId: p.id})
	}
	r, k := res["runc"], res["raksh"]
	b.ReportMetric(k.mibps, "raksh-MiB/s")
	b.ReportMetric(r.mibps, "runc-MiB/s")
	b.ReportMetric(k.mibps/r.mibps, "raksh/runc-throughput")
	b.ReportMetric(k.reqMs, "raksh-ms/req")
	b.ReportMetric(r.reqMs, "runc-ms/req")
	b.ReportMetric(k.reqMs/r.reqMs, "raksh/runc-latency")

	// Start time of a raksh pod (sandbox + one container started) with a
	// NIC and without (host network).
	for _, hostNet := range []bool{false, true} {
		name := "start-nic"
		if hostNet {
			name = "start-nonic"
		}
		start := time.Now()
		p := e.startOnly(b, name, hostNet)
		d := time.Since(start)
		e.rs.StopPodSandbox(e.ctx, &cri.StopPodSandboxRequest{PodSandboxId: p})
		e.rs.RemovePodSandbox(e.ctx, &cri.RemovePodSandboxRequest{PodSandboxId: p})
		b.ReportMetric(float64(d.Milliseconds()), strings.TrimPrefix(name, "start-")+"-start-ms")
	}
}

// sendMiB sends benchBytes to addr and returns MiB/s, timed until the
// receiver closed the connection (it has read everything).
func sendMiB(b *testing.B, addr string) float64 {
	b.Helper()
	buf := make([]byte, 1<<20)
	var last error
	for try := 0; try < 20; try++ {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			last = err
			time.Sleep(500 * time.Millisecond)
			continue
		}
		start := time.Now()
		for sent := 0; sent < benchBytes; sent += len(buf) {
			if _, err := c.Write(buf); err != nil {
				b.Fatalf("send to %s: %v", addr, err)
			}
		}
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(5 * time.Minute))
		io.Copy(io.Discard, c)
		d := time.Since(start)
		c.Close()
		return float64(benchBytes) / (1 << 20) / d.Seconds()
	}
	b.Fatalf("dial %s: %v", addr, last)
	return 0
}

// startOnly starts a raksh pod with one sleeping container and returns its
// sandbox id.
func (e *netEnv) startOnly(b *testing.B, name string, hostNet bool) string {
	b.Helper()
	cfg := &cri.PodSandboxConfig{
		Metadata: &cri.PodSandboxMetadata{Name: name, Uid: "uid-" + name, Namespace: "raksh-net"},
		Linux:    &cri.LinuxPodSandboxConfig{},
	}
	if hostNet {
		cfg.Linux.SecurityContext = &cri.LinuxSandboxSecurityContext{NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE}}
	}
	sb, err := e.rs.RunPodSandbox(e.ctx, &cri.RunPodSandboxRequest{Config: cfg, RuntimeHandler: "raksh"})
	if err != nil {
		b.Fatalf("RunPodSandbox %s: %v", name, err)
	}
	c, err := e.rs.CreateContainer(e.ctx, &cri.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, SandboxConfig: cfg,
		Config: &cri.ContainerConfig{Metadata: &cri.ContainerMetadata{Name: "c"}, Image: &cri.ImageSpec{Image: criBusybox},
			Command: []string{"/bin/sleep", "600"}, Linux: &cri.LinuxContainerConfig{}}})
	if err != nil {
		b.Fatalf("CreateContainer %s: %v", name, err)
	}
	if _, err := e.rs.StartContainer(e.ctx, &cri.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		b.Fatalf("StartContainer %s: %v", name, err)
	}
	return sb.PodSandboxId
}
