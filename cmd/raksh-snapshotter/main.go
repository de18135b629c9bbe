//go:build linux

// Command raksh-snapshotter is containerd's proxy snapshotter (and diff
// applier) for Raksh: see docs/snapshotter.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/log"

	"github.com/raksh-project/raksh/internal/version"
	"github.com/raksh-project/raksh/snapshotter"
)

func main() {
	var (
		configPath = flag.String("config", "", "TOML config file (default: built-in defaults)")
		address    = flag.String("address", "", "override the socket address")
		root       = flag.String("root", "", "override the root directory")
		logLevel   = flag.String("log-level", "", "override the log level")
		showVer    = flag.Bool("version", false, "print the version and exit")
	)
	flag.Parse()
	if *showVer {
		fmt.Println(version.String("raksh-snapshotter"))
		return
	}

	cfg := snapshotter.DefaultConfig()
	if *configPath != "" {
		var err error
		if cfg, err = snapshotter.LoadConfig(*configPath); err != nil {
			fmt.Fprintln(os.Stderr, "raksh-snapshotter:", err)
			os.Exit(1)
		}
	}
	if *address != "" {
		cfg.Address = *address
	}
	if *root != "" {
		cfg.Root = *root
	}
	if *logLevel != "" {
		cfg.LogLevel = *logLevel
	}
	if err := log.SetLevel(cfg.LogLevel); err != nil {
		fmt.Fprintln(os.Stderr, "raksh-snapshotter:", err)
		os.Exit(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := snapshotter.Serve(ctx, cfg); err != nil {
		log.G(ctx).WithError(err).Error("raksh-snapshotter failed")
		os.Exit(1)
	}
}
