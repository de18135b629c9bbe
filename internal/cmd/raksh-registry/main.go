// Command raksh-registry is a tiny OCI registry for tests and demos:
// go-containerregistry's pkg/registry, listening on loopback only.
//
//	raksh-registry -addr 127.0.0.1:5000 [-dir /var/tmp/raksh-registry]
//
// Blobs are kept in memory, or on disk under -dir.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:5000", "listen address (must be a loopback address)")
	dir := flag.String("dir", "", "store blobs on disk in this directory (default: in memory)")
	quiet := flag.Bool("quiet", false, "do not log requests")
	flag.Parse()
	if err := run(*addr, *dir, *quiet); err != nil {
		fmt.Fprintln(os.Stderr, "raksh-registry:", err)
		os.Exit(1)
	}
}

func run(addr, dir string, quiet bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("refusing non-loopback address %q", addr)
	}
	var opts []registry.Option
	if quiet {
		opts = append(opts, registry.Logger(log.New(ioDiscard{}, "", 0)))
	}
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		opts = append(opts, registry.WithBlobHandler(registry.NewDiskBlobHandler(dir)))
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: registry.New(opts...), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	fmt.Fprintf(os.Stderr, "raksh-registry listening on %s\n", l.Addr())
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

type ioDiscard struct{}

func (ioDiscard) Write(p []byte) (int, error) { return len(p), nil }
