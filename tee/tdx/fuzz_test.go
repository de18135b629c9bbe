package tdx

import "testing"

// FuzzParseQuote fuzzes the quote parser (go-tdx-guest's abi.QuoteToProto
// and CheckQuoteV4 behind ParseQuote). Seeds: testdata/fuzz and the real
// SPR quote.
func FuzzParseQuote(f *testing.F) {
	f.Add(sampleQuote(f))
	f.Add(sampleQuote(f)[:700])
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := ParseQuote(b)
		if err != nil {
			return
		}
		_ = q.GetTdQuoteBody().GetMrTd()
	})
}

// FuzzParseEvidence fuzzes the JSON evidence envelope.
func FuzzParseEvidence(f *testing.F) {
	f.Add(evidenceOf(f, sampleQuote(f)))
	f.Add([]byte(`{"version":1,"quote":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = ParseEvidence(b)
	})
}
