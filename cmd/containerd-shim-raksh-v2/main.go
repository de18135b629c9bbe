// Command containerd-shim-raksh-v2 is the Raksh runtime shim
// (io.containerd.raksh.v2): one shim and one VM per pod.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/pkg/shim"

	"github.com/raksh-project/raksh/internal/version"
	"github.com/raksh-project/raksh/runtime"
)

func main() {
	// containerd's shim flags have -v (containerd's version); --version is ours.
	if version.Requested(os.Args[1:]) {
		fmt.Println(version.String("containerd-shim-raksh-v2"))
		return
	}
	if len(os.Args) == 2 && os.Args[1] == runtime.NetnsHolderArg {
		runtime.HoldNetns()
	}
	runtime.Register()
	shim.RunShim(context.Background(), runtime.NewManager(runtime.RuntimeName), func(c *shim.Config) {
		c.NoReaper = false
	})
}
