package tdx

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// writeSeed stores b as a seed corpus entry testdata/fuzz/<fuzz>/<name>.
func writeSeed(t *testing.T, fuzz, name string, b []byte) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", fuzz)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data := "go test fuzz v1\n[]byte(" + strconv.Quote(string(b)) + ")\n"
	if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestWriteFuzzSeeds regenerates the committed seed corpus under
// testdata/fuzz when RAKSH_WRITE_FUZZ_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("RAKSH_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set RAKSH_WRITE_FUZZ_SEEDS=1 to regenerate testdata/fuzz")
	}
	writeSeed(t, "FuzzParseQuote", "spr-quote", sampleQuote(t))
	writeSeed(t, "FuzzParseQuote", "spr-quote-truncated", sampleQuote(t)[:700])
	writeSeed(t, "FuzzParseEvidence", "spr-evidence", evidenceOf(t, sampleQuote(t)))
}
