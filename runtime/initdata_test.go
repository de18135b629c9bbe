package runtime

import (
	"context"
	"os"
	"strings"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"

	"github.com/raksh-project/raksh/agent"
	"github.com/raksh-project/raksh/internal/transport"
	"github.com/raksh-project/raksh/tee/initdata"
)

// acceptInitData takes any document (the TEE check is the agent's, tested
// in agent/kbssession) and records it.
type acceptInitData struct{ got chan []byte }

func (a acceptInitData) Deliver(_ context.Context, doc []byte) error { a.got <- doc; return nil }
func (a acceptInitData) InitData(context.Context) (*initdata.Document, error) {
	return nil, nil
}

// TestPodInitDataDelivered: the pod's init data reaches the agent through
// the typed call when the VM boots; a later container bringing other init
// data is refused, one bringing the same is not.
func TestPodInitDataDelivered(t *testing.T) {
	e := newEnv(t)
	os.WriteFile(os.Getenv(ConfigEnv), []byte("accel = \"tcg\"\ntee = \"sim\"\n"), 0o644)
	got := make(chan []byte, 2)
	e.vm.opts = func(func() transport.Session) []agent.Opt {
		return []agent.Opt{agent.WithInitData(acceptInitData{got})}
	}
	doc := `{"version":"raksh.initdata/v1","policy":{"deny_logs":true}}`
	create := func(id, doc string) error {
		b := e.bundle(t, id, map[string]string{initdata.Annotation: doc}, "/bin/true")
		_, err := e.svc.Create(e.ctx, &taskAPI.CreateTaskRequest{ID: id, Bundle: b})
		return err
	}
	if err := create("c1", doc); err != nil {
		t.Fatal(err)
	}
	if d := <-got; string(d) != doc {
		t.Fatalf("the agent got %q", d)
	}
	if err := create("c2", strings.Replace(doc, "true", "false", 1)); err == nil || !strings.Contains(err.Error(), "init data other than its pod's") {
		t.Fatalf("a container with other init data: %v", err)
	}
	if err := create("c3", doc); err != nil {
		t.Fatalf("a container with the pod's init data: %v", err)
	}
	if len(got) != 0 || e.vms != 1 {
		t.Fatalf("init data delivered %d more times, %d VMs", len(got), e.vms)
	}
}
