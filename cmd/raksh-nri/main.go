// Command raksh-nri is Raksh's NRI plugin (see docs/nri.md). Installed as
// /opt/nri/plugins/10-raksh, containerd launches it and passes the
// configuration from /etc/nri/conf.d/10-raksh.conf; run as a service, it
// connects to the NRI socket, reads -config and reconnects whenever
// containerd restarts.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/log"
	"github.com/containerd/nri/pkg/stub"

	"github.com/raksh-project/raksh/internal/version"
	"github.com/raksh-project/raksh/nri"
)

func main() {
	var (
		name       = flag.String("name", "", "plugin name to register as (default "+nri.PluginName+", or the runtime's NRI_PLUGIN_NAME)")
		idx        = flag.String("idx", "", "plugin index to register with (default "+nri.PluginIdx+", or the runtime's NRI_PLUGIN_IDX)")
		socket     = flag.String("socket", "", "NRI socket to connect to (default /var/run/nri/nri.sock)")
		configPath = flag.String("config", "", "YAML configuration used when the runtime passes none (external mode)")
		logLevel   = flag.String("log-level", "info", "log level")
		showVer    = flag.Bool("version", false, "print the version and exit")
	)
	flag.Parse()
	if *showVer {
		fmt.Println(version.String("raksh-nri"))
		return
	}
	if err := log.SetLevel(*logLevel); err != nil {
		fmt.Fprintln(os.Stderr, "raksh-nri:", err)
		os.Exit(2)
	}

	var opts []nri.Opt
	if *configPath != "" {
		opts = append(opts, nri.WithConfigFile(*configPath))
	}
	p, err := nri.New(opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "raksh-nri:", err)
		os.Exit(1)
	}
	var stubOpts []stub.Option
	if *name != "" {
		stubOpts = append(stubOpts, stub.WithPluginName(*name))
	}
	if *idx != "" {
		stubOpts = append(stubOpts, stub.WithPluginIdx(*idx))
	}
	if *socket != "" {
		stubOpts = append(stubOpts, stub.WithSocketPath(*socket))
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := nri.Run(ctx, p, nri.RunOpts{StubOptions: stubOpts}); err != nil {
		log.G(ctx).WithError(err).Error("raksh-nri stopped")
		os.Exit(1)
	}
}
