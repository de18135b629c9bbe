package agent

import (
	"context"
	"errors"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

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
