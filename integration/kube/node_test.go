//go:build integration

package kube

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// sandbox is a pod's CRI sandbox on the node.
type sandbox struct{ id, netns string }

// sandboxOf returns the CRI sandbox of the pod with uid (empty if none).
func (c *cluster) sandboxOf(uid string) sandbox {
	conn, err := grpc.NewClient("unix://"+c.containerd.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return sandbox{}
	}
	defer conn.Close()
	rs := cri.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := rs.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{Filter: &cri.PodSandboxFilter{
		LabelSelector: map[string]string{"io.kubernetes.pod.uid": uid}}})
	if err != nil || len(l.Items) == 0 {
		return sandbox{}
	}
	sb := sandbox{id: l.Items[0].Id}
	st, err := rs.PodSandboxStatus(ctx, &cri.PodSandboxStatusRequest{PodSandboxId: sb.id, Verbose: true})
	if err != nil {
		return sb
	}
	info := st.GetInfo()["info"]
	for _, prefix := range []string{`"/var/run/netns/`, `"/run/netns/`} {
		if i := strings.Index(info, prefix); i >= 0 {
			p := info[i+1:]
			sb.netns = p[:strings.IndexByte(p, '"')]
			break
		}
	}
	return sb
}

// qemuOf returns the QEMU processes whose command line names the sandbox.
func (c *cluster) qemuOf(id string) []int {
	var pids []int
	for _, p := range c.containerd.QEMUProcesses() {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(id)) {
			pids = append(pids, p)
		}
	}
	return pids
}

// tapsIn lists the tap devices in a network namespace.
func tapsIn(path string) []string {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil
	}
	defer h.Close()
	links, _ := h.LinkList()
	var taps []string
	for _, l := range links {
		if l.Type() == "tuntap" {
			taps = append(taps, l.Attrs().Name)
		}
	}
	return taps
}

// mountsContaining lists the mount points whose path contains any of ids.
func mountsContaining(ids ...string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var ms []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		for _, id := range ids {
			if id != "" && strings.Contains(f[4], id) {
				ms = append(ms, f[4])
				break
			}
		}
	}
	return ms
}
