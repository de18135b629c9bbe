package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/policy/guard"
	"github.com/raksh-project/raksh/tee/initdata"
)

type fakeInitData struct {
	doc *initdata.Document
	err error
}

func (f fakeInitData) Deliver(context.Context, []byte) error { return nil }
func (f fakeInitData) InitData(context.Context) (*initdata.Document, error) {
	return f.doc, f.err
}

func TestPodPolicy(t *testing.T) {
	ctx := context.Background()
	plain := func() *container {
		return &container{id: "c", spec: &specs.Spec{Process: &specs.Process{Args: []string{"sh"}}, Annotations: map[string]string{}}}
	}
	// Without init data nothing changes.
	s := &Service{}
	c := plain()
	if p, err := s.podPolicy(ctx, c); err != nil || p != (initdata.Policy{}) {
		t.Fatalf("no init data: %+v, %v", p, err)
	}
	// Bound but not delivered: refused.
	s = &Service{initData: fakeInitData{err: errdefs.ErrFailedPrecondition}}
	if _, err := s.podPolicy(ctx, c); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("undelivered init data: %v", err)
	}
	// require_sealed refuses a container without an envelope, not the sandbox.
	s = &Service{initData: fakeInitData{doc: &initdata.Document{Policy: initdata.Policy{RequireSealed: true, DenyExec: true, DenyLogs: true}}}}
	if _, err := s.podPolicy(ctx, c); err == nil {
		t.Fatal("unsealed container admitted by a policy requiring sealing")
	}
	sb := plain()
	sb.spec.Annotations[guard.ContainerTypeAnnotation] = guard.ContainerTypeSandbox
	if _, err := s.podPolicy(ctx, sb); err != nil {
		t.Fatalf("sandbox refused: %v", err)
	}
	sealed := plain()
	key, err := envelope.GenerateKey(envelope.KeyP256)
	if err != nil {
		t.Fatal(err)
	}
	env, err := envelope.Seal(&envelope.Spec{Args: []string{"true"}, Exec: &envelope.ExecPolicy{AllowExec: true, AllowLogs: true}},
		envelope.Binding{Namespace: "default", Pod: "c", Container: "c"}, envelope.Recipient{KeyID: "kbs:///default/workload/k", Key: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	sealed.spec.Annotations[envelope.ContainerAnnotation] = string(env)
	sealed.spec.Process.Args = []string{envelope.Placeholder}
	p, err := s.podPolicy(ctx, sealed)
	if err != nil {
		t.Fatalf("sealed container refused: %v", err)
	}
	// deny_exec and deny_logs hold whatever the envelope allows.
	applyPodPolicy(sealed, p)
	if err := checkExec(sealed); !errors.Is(err, ErrPodExecDenied) {
		t.Fatalf("exec: %v", err)
	}
	if !sealed.noLogs {
		t.Fatal("deny_logs not applied")
	}
}

type refusingInitData struct{ fakeInitData }

func (refusingInitData) Deliver(context.Context, []byte) error {
	return fmt.Errorf("digest mismatch: %w", errdefs.ErrPermissionDenied)
}

func TestInitDataService(t *testing.T) {
	ctx := context.Background()
	doc := []byte(`{"version":"raksh.initdata/v1"}`)
	req := &agentapi.DeliverInitDataRequest{Document: doc}
	if _, err := (&initDataService{&Service{}}).Deliver(ctx, req); !errdefs.IsNotImplemented(errgrpc.ToNative(err)) {
		t.Fatalf("agent without init data: %v", err)
	}
	resp, err := (&initDataService{&Service{initData: fakeInitData{}}}).Deliver(ctx, req)
	if err != nil || !bytes.Equal(resp.GetDigest(), initdata.Digest(doc)) {
		t.Fatalf("delivery: %x, %v", resp.GetDigest(), err)
	}
	if _, err := (&initDataService{&Service{initData: refusingInitData{}}}).Deliver(ctx, req); !errdefs.IsPermissionDenied(errgrpc.ToNative(err)) {
		t.Fatalf("refusal: %v", err)
	}
	big := &agentapi.DeliverInitDataRequest{Document: make([]byte, initdata.MaxSize+1)}
	if _, err := (&initDataService{&Service{initData: fakeInitData{}}}).Deliver(ctx, big); !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
		t.Fatalf("oversized: %v", err)
	}
}
