package agent

import (
	"context"
	"testing"

	runc "github.com/containerd/go-runc"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent/network"
)

func TestSetupNetwork(t *testing.T) {
	ctx := context.Background()
	s := NewService(t.TempDir(), noRuntime())
	applied := 0
	s.net.apply = func(context.Context, *network.Config) error { applied++; return nil }
	bad := &network.Config{Interfaces: []network.Interface{{Name: "lo", MAC: "02:42:0a:c7:26:05", MTU: 1500}}}
	if err := s.SetupNetwork(ctx, bad); !errdefs.IsInvalidArgument(err) || applied != 0 {
		t.Fatalf("invalid config: %v (applied %d)", err, applied)
	}
	spec := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}, {Type: specs.PIDNamespace}}}}
	if err := s.shareVMNetwork(ctx, spec); err != nil || len(spec.Linux.Namespaces) != 2 {
		t.Fatalf("without a pod network the container keeps its netns: %v %v", err, spec.Linux.Namespaces)
	}
	good := &network.Config{Interfaces: []network.Interface{{Name: "eth0", MAC: "02:42:0a:c7:26:05", MTU: 1500, Addrs: []string{"10.199.38.5/24"}}}}
	if err := s.SetupNetwork(ctx, good); err != nil || applied != 1 {
		t.Fatalf("%v (applied %d)", err, applied)
	}
	if err := s.SetupNetwork(ctx, good); !errdefs.IsFailedPrecondition(err) || applied != 1 {
		t.Fatalf("second call: %v", err)
	}
	if err := s.shareVMNetwork(ctx, spec); err != nil || len(spec.Linux.Namespaces) != 1 || spec.Linux.Namespaces[0].Type != specs.PIDNamespace {
		t.Fatalf("with a pod network the container shares the VM's: %v %v", err, spec.Linux.Namespaces)
	}
}

func TestSetupNetworkAfterContainer(t *testing.T) {
	s := NewService(t.TempDir(), noRuntime())
	s.net.apply = func(context.Context, *network.Config) error { return nil }
	s.containers["c"] = &container{id: "c"}
	good := &network.Config{Interfaces: []network.Interface{{Name: "eth0", MAC: "02:42:0a:c7:26:05", MTU: 1500}}}
	if err := s.SetupNetwork(context.Background(), good); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("after a container: %v", err)
	}
}

// noRuntime is a Runtime that runs nothing (the network tests create no
// container).
func noRuntime() *Runtime { return &Runtime{Binary: "false", Exits: make(chan runc.Exit)} }
