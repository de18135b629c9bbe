// Command raksh-cri is a tiny CRI client for the demo: it does what the
// kubelet does for one pod with one container, so raksh-nri seals an
// unmodified pod on the node. Not a product binary.
//
//	raksh-cri -address SOCK run -pod web -container app -image REF -env-file FILE -- sh -c '...'
//	raksh-cri -address SOCK rm-all
//
// run creates the pod sandbox on -handler, creates and starts the
// container, waits for it to exit and prints its log lines (the CRI log
// file's messages). The pod is left for inspection; rm-all stops and
// removes every pod.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func main() {
	address := flag.String("address", "/run/containerd/containerd.sock", "containerd's socket")
	timeout := flag.Duration("timeout", 5*time.Minute, "overall timeout")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "raksh-cri: want run or rm-all")
		os.Exit(2)
	}
	conn, err := grpc.NewClient("unix://"+*address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err == nil {
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		rs := cri.NewRuntimeServiceClient(conn)
		switch flag.Arg(0) {
		case "run":
			err = run(ctx, rs, flag.Args()[1:])
		case "rm-all":
			err = rmAll(ctx, rs)
		default:
			err = fmt.Errorf("unknown command %q", flag.Arg(0))
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "raksh-cri:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, rs cri.RuntimeServiceClient, args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	pod := fs.String("pod", "web", "pod name")
	ns := fs.String("namespace", "default", "pod namespace")
	name := fs.String("container", "app", "container name")
	image := fs.String("image", "", "container image (in containerd's k8s.io namespace)")
	handler := fs.String("handler", "raksh", "runtime handler (runtimeClassName)")
	envFile := fs.String("env-file", "", "NAME=VALUE lines: the container's env, as in the Pod spec")
	logDir := fs.String("log-dir", "", "pod log directory (required)")
	fs.Parse(args)
	if *image == "" || *logDir == "" || fs.NArg() == 0 {
		return errors.New("run needs -image, -log-dir and a command")
	}
	var envs []*cri.KeyValue
	if *envFile != "" {
		f, err := os.Open(*envFile)
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), "=")
			if ok {
				envs = append(envs, &cri.KeyValue{Key: k, Value: []byte(v)})
			}
		}
		f.Close()
	}
	podCfg := &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: *pod, Uid: "uid-" + *pod, Namespace: *ns},
		Hostname:     *pod,
		LogDirectory: *logDir,
		Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{
			NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE},
		}},
	}
	if err := os.MkdirAll(*logDir, 0o755); err != nil {
		return err
	}
	sb, err := rs.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: podCfg, RuntimeHandler: *handler})
	if err != nil {
		return fmt.Errorf("RunPodSandbox: %w", err)
	}
	c, err := rs.CreateContainer(ctx, &cri.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, SandboxConfig: podCfg,
		Config: &cri.ContainerConfig{
			Metadata: &cri.ContainerMetadata{Name: *name},
			Image:    &cri.ImageSpec{Image: *image},
			Command:  fs.Args(),
			Envs:     envs,
			LogPath:  *name + ".log",
			Linux:    &cri.LinuxContainerConfig{},
		}})
	if err != nil {
		return fmt.Errorf("CreateContainer: %w", err)
	}
	fmt.Printf("pod %s/%s sandbox %s container %s\n", *ns, *pod, sb.PodSandboxId, c.ContainerId)
	if _, err := rs.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		return fmt.Errorf("StartContainer: %w", err)
	}
	for {
		st, err := rs.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: c.ContainerId})
		if err != nil {
			return fmt.Errorf("ContainerStatus: %w", err)
		}
		if st.Status.State == cri.ContainerState_CONTAINER_EXITED {
			fmt.Printf("container exited with %d\n", st.Status.ExitCode)
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	// CRI log lines: "<time> <stream> <P|F> <message>".
	b, err := os.ReadFile(filepath.Join(*logDir, *name+".log"))
	if err != nil {
		return err
	}
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if f := strings.SplitN(l, " ", 4); len(f) == 4 {
			fmt.Printf("log: %s\n", f[3])
		}
	}
	return nil
}

func rmAll(ctx context.Context, rs cri.RuntimeServiceClient) error {
	pods, err := rs.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{})
	if err != nil {
		return err
	}
	for _, p := range pods.Items {
		if _, err := rs.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			return err
		}
		if _, err := rs.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			return err
		}
	}
	return nil
}
