package tdx

import (
	"context"
	"sync"
	"testing"
	"time"
)

// BenchmarkVerifySampleQuote measures one full verification of the real
// SPR quote (PCK chain, QE report, quote signature, reference values).
func BenchmarkVerifySampleQuote(b *testing.B) {
	v, err := NewVerifier(sampleConfig(), WithNow(func() time.Time { return quoteNow }))
	if err != nil {
		b.Fatal(err)
	}
	ev := evidenceOf(b, sampleQuote(b))
	rd := sampleReportData(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, ev, rd); err != nil {
			b.Fatal(err)
		}
	}
}

// TestVerifyConcurrent checks a Verifier is safe for concurrent use (run
// with -race): go-tdx-guest keeps per-call state in its options.
func TestVerifyConcurrent(t *testing.T) {
	v, err := NewVerifier(sampleConfig(), WithNow(func() time.Time { return quoteNow }))
	if err != nil {
		t.Fatal(err)
	}
	ev := evidenceOf(t, sampleQuote(t))
	rd := sampleReportData(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := v.Verify(context.Background(), ev, rd)
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
