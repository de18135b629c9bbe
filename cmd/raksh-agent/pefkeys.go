package main

import (
	"context"
	"crypto"
	"sync"

	"github.com/containerd/log"

	"github.com/raksh-project/raksh/agent"
	"github.com/raksh-project/raksh/agent/kbssession"
	"github.com/raksh-project/raksh/agent/unseal"
	"github.com/raksh-project/raksh/tee"
	"github.com/raksh-project/raksh/tee/detect"
	"github.com/raksh-project/raksh/tee/pef"
)

// keySource is the agent's source of workload keys for sealed containers:
// the key broker, and on PEF first the files the ultravisor released (keys
// their owner sealed into the initrd: PEF without a broker).
func keySource(kbs *kbssession.Session) agent.KeySourceFunc {
	broker := kbs.KeySource()
	var (
		once  sync.Once
		files unseal.ReleasedFiles
	)
	return func(ctx context.Context) (unseal.KeySource, error) {
		once.Do(func() { files = pefReleasedFiles(ctx) })
		if files == nil {
			return broker(ctx)
		}
		return unseal.ReleasedKeys{Files: files, Fallback: lazyKeys(broker)}, nil
	}
}

// lazyKeys reaches the broker only when a key is asked of it.
type lazyKeys agent.KeySourceFunc

func (f lazyKeys) PrivateKey(ctx context.Context, kid string) (crypto.PrivateKey, error) {
	ks, err := f(ctx)
	if err != nil {
		return nil, err
	}
	return ks.PrivateKey(ctx, kid)
}

// pefReleasedFiles returns the files the PEF ultravisor (or the simulated
// one) released to this guest, or nil when it is not a PEF guest.
func pefReleasedFiles(ctx context.Context) unseal.ReleasedFiles {
	res, err := detect.Detect(ctx)
	if err != nil || res.Type != tee.PEF {
		return nil
	}
	a, err := detect.NewAttester(ctx)
	if err != nil {
		log.G(ctx).WithError(err).Warn("PEF guest, but its released files cannot be read")
		return nil
	}
	if pa, ok := a.(*pef.Attester); ok {
		return pa.KeySource()
	}
	return nil
}
