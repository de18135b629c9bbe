package snp

import (
	"context"
	"sync"
	"testing"
	"time"
)

// BenchmarkVerifyRealReport measures one full verification of the real
// Milan report (VCEK chain to the embedded ARK, signature, policy).
func BenchmarkVerifyRealReport(b *testing.B) {
	v, err := NewVerifier(realConfig(), WithCertificates(readTestdata(b, "vcek.testcer")),
		WithNow(func() time.Time { return realNow }))
	if err != nil {
		b.Fatal(err)
	}
	ev := realEvidence(b, false)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, ev, realReportData); err != nil {
			b.Fatal(err)
		}
	}
}

// TestVerifyConcurrent checks a Verifier is safe for concurrent use (run
// with -race).
func TestVerifyConcurrent(t *testing.T) {
	v, err := NewVerifier(realConfig(), WithCertificates(readTestdata(t, "vcek.testcer")),
		WithNow(func() time.Time { return realNow }))
	if err != nil {
		t.Fatal(err)
	}
	ev := realEvidence(t, false)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := v.Verify(context.Background(), ev, realReportData)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}
