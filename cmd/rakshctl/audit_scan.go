package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// secretPattern is a well-known secret shape the audit looks for when no
// marker is given (or with --patterns).
type secretPattern struct {
	Name string
	re   *regexp.Regexp
}

// knownSecretPatterns are shapes that should never sit in clear on a node
// running confidential containers. They are deliberately few and specific:
// a node legitimately holds many random-looking strings.
var knownSecretPatterns = []secretPattern{
	{"pem-private-key", regexp.MustCompile(`-----BEGIN (?:RSA |EC |OPENSSH |ENCRYPTED )?PRIVATE KEY-----`)},
	{"aws-access-key-id", regexp.MustCompile(`\b(?:AKIA|ASIA)[0-9A-Z]{16}\b`)},
	{"github-token", regexp.MustCompile(`\bgh[pousr]_[A-Za-z0-9]{36}\b`)},
	{"slack-token", regexp.MustCompile(`\bxox[abprs]-[A-Za-z0-9-]{10,}`)},
	{"jwk-private-key", regexp.MustCompile(`"d"\s*:\s*"[A-Za-z0-9_-]{32,}"`)},
}

// patternOverlap is how far a pattern match may straddle two chunks.
const patternOverlap = 256

// maxGunzip bounds how much of one gzip file the audit decompresses.
const maxGunzip = 1 << 30

// finding is one hit. It names where and what (the marker's number or the
// pattern's name), never the value found.
type finding struct {
	Place  string `json:"place"`
	Path   string `json:"path"`
	What   string `json:"what"`
	Offset int64  `json:"offset"`
	// Gunzipped is set when the hit is in the decompressed content of a
	// gzip file (a cached plain layer, a rotated log).
	Gunzipped bool `json:"gunzipped,omitempty"`
}

// scannedPlace reports what one place covered.
type scannedPlace struct {
	Place  string `json:"place"`
	Path   string `json:"path"`
	Files  int    `json:"files"`
	Bytes  int64  `json:"bytes"`
	Absent bool   `json:"absent,omitempty"`
	// Unreadable counts entries the kernel refused even to root (e.g.
	// /proc/<pid>/environ of processes in another user namespace).
	Unreadable int `json:"unreadable,omitempty"`
}

// scanner looks for markers and patterns in files and process memory
// exposed through /proc.
type scanner struct {
	markers  [][]byte
	patterns []secretPattern
	// skipPIDs are processes not to scan (the audit itself).
	skipPIDs map[int]bool

	findings []finding
	scanned  []scannedPlace
	errs     []string
}

func (s *scanner) errorf(format string, a ...any) {
	s.errs = append(s.errs, fmt.Sprintf(format, a...))
}

// maxNeedle is the longest marker, or the pattern overlap.
func (s *scanner) overlap() int {
	n := patternOverlap
	for _, m := range s.markers {
		if len(m) > n {
			n = len(m)
		}
	}
	return n
}

// scanReader scans r, reporting hits at place/path. It returns the bytes read.
func (s *scanner) scanReader(place, path string, r io.Reader, gunzipped bool) (int64, error) {
	const chunk = 1 << 20
	ov := s.overlap()
	buf := make([]byte, 0, chunk+ov)
	var base, total int64 // base: file offset of buf[0]
	seen := map[string]bool{}
	report := func(what string, off int64) {
		// One finding per (what, file): a secret repeated in a log is one problem.
		if seen[what] {
			return
		}
		seen[what] = true
		s.findings = append(s.findings, finding{Place: place, Path: path, What: what, Offset: off, Gunzipped: gunzipped})
	}
	tmp := make([]byte, chunk)
	for {
		n, err := io.ReadFull(r, tmp)
		buf = append(buf, tmp[:n]...)
		total += int64(n)
		for i, m := range s.markers {
			if j := bytes.Index(buf, m); j >= 0 {
				report("marker "+strconv.Itoa(i+1), base+int64(j))
			}
		}
		for _, p := range s.patterns {
			if loc := p.re.FindIndex(buf); loc != nil {
				report("pattern "+p.Name, base+int64(loc[0]))
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		if len(buf) > ov {
			keep := buf[len(buf)-ov:]
			base += int64(len(buf) - ov)
			buf = append(buf[:0], keep...)
		}
	}
}

// scanFile scans one regular file, and the decompressed content of a gzip
// file too.
func (s *scanner) scanFile(place, path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<16)
	magic, _ := br.Peek(2)
	isGzip := len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b
	n, err := s.scanReader(place, path, br, false)
	if err != nil || !isGzip {
		return n, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return n, err
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		return n, nil // gzip magic, not gzip: scanned raw already
	}
	defer zr.Close()
	// A truncated or corrupt stream is scanned as far as it goes.
	_, _ = s.scanReader(place, path, io.LimitReader(zr, maxGunzip), true)
	return n, nil
}

// scanTree scans every regular file under root without following links.
func (s *scanner) scanTree(place, root string) {
	sp := scannedPlace{Place: place, Path: root}
	st, err := os.Lstat(root)
	if errors.Is(err, fs.ErrNotExist) {
		sp.Absent = true
		s.scanned = append(s.scanned, sp)
		return
	}
	if err != nil {
		s.errorf("%s %s: %v", place, root, err)
		return
	}
	if st.Mode().IsRegular() {
		n, err := s.scanFile(place, root)
		if err != nil {
			s.errorf("%s %s: %v", place, root, err)
		}
		sp.Files, sp.Bytes = 1, n
		s.scanned = append(s.scanned, sp)
		return
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				s.errorf("%s %s: %v", place, p, err)
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		n, err := s.scanFile(place, p)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.errorf("%s %s: %v", place, p, err)
		}
		sp.Files++
		sp.Bytes += n
		return nil
	})
	if err != nil {
		s.errorf("%s %s: %v", place, root, err)
	}
	s.scanned = append(s.scanned, sp)
}

// scanProc scans /proc/<pid>/cmdline and environ of every process but the
// skipped ones, under procRoot (normally /proc).
func (s *scanner) scanProc(procRoot string) {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		s.errorf("proc %s: %v", procRoot, err)
		return
	}
	sp := scannedPlace{Place: "proc", Path: procRoot + "/*/{cmdline,environ}"}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || s.skipPIDs[pid] {
			continue
		}
		for _, f := range []string{"cmdline", "environ"} {
			p := filepath.Join(procRoot, e.Name(), f)
			b, err := os.ReadFile(p)
			if err != nil {
				// Exited since the listing, or a kernel thread: nothing to see.
				switch {
				case errors.Is(err, fs.ErrPermission):
					sp.Unreadable++
				case !errors.Is(err, fs.ErrNotExist) && !isESRCH(err):
					s.errorf("proc %s: %v", p, err)
				}
				continue
			}
			if _, err := s.scanReader("proc", p+" ("+procName(procRoot, e.Name())+")", bytes.NewReader(b), false); err != nil {
				s.errorf("proc %s: %v", p, err)
			}
			sp.Files++
			sp.Bytes += int64(len(b))
		}
	}
	s.scanned = append(s.scanned, sp)
}

func isESRCH(err error) bool {
	return strings.Contains(err.Error(), "no such process")
}

func procName(procRoot, pid string) string {
	b, err := os.ReadFile(filepath.Join(procRoot, pid, "comm"))
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}
