package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/containerd/log"

	"github.com/raksh-project/raksh/kbs"
	"github.com/raksh-project/raksh/tee"
	"github.com/raksh-project/raksh/tee/sim"
)

// serve runs the broker until ctx is done. ready, if set, receives the
// bound address once listening.
func serve(ctx context.Context, cfg config, ready func(addr string)) error {
	reg := tee.NewRegistry()
	if err := cfg.registerHardware(reg); err != nil {
		return err
	}
	if cfg.PEF != nil && len(cfg.PEF.SimulatedKeys) > 0 {
		log.G(ctx).Warn("pef simulated_keys: their claims are INSECURE (sealed for the simulated ultravisor); a policy rule must set allow_insecure to accept them")
	}
	if cfg.SimPlatformKeysFile != "" {
		data, err := os.ReadFile(cfg.SimPlatformKeysFile)
		if err != nil {
			return fmt.Errorf("failed to read sim platform keys: %w", err)
		}
		keys, err := sim.ParsePlatformPublicKeys(data)
		if err != nil {
			return err
		}
		v, err := sim.NewVerifier(keys...)
		if err != nil {
			return err
		}
		if err := reg.RegisterVerifier(v); err != nil {
			return err
		}
		log.G(ctx).Warn("sim verifier enabled: simulated TEE evidence is INSECURE; the policy must list \"sim\" to accept it")
	}
	store, err := kbs.NewFileStore(cfg.ResourceDir)
	if err != nil {
		return err
	}
	opts, err := cfg.Opts()
	if err != nil {
		return err
	}
	srv, err := kbs.New(store, reg, opts...)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Address)
	if err != nil {
		return fmt.Errorf("failed to listen on %s: %w", cfg.Address, err)
	}
	hs := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	scheme := "http"
	if cfg.TLSCertFile != "" || cfg.TLSKeyFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			ln.Close()
			return fmt.Errorf("failed to load TLS key pair: %w", err)
		}
		hs.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		ln = tls.NewListener(ln, hs.TLSConfig)
		scheme = "https"
	} else {
		log.G(ctx).Warn("serving plain HTTP: use TLS unless behind a TLS-terminating proxy or on loopback")
	}
	log.G(ctx).WithField("address", ln.Addr().String()).WithField("scheme", scheme).WithField("verifiers", reg.VerifierTypes()).Info("raksh-kbs listening")
	if ready != nil {
		ready(ln.Addr().String())
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
}
