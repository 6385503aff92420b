package web

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed static
var staticFS embed.FS

// staticFiles serves the vendored assets under content-hashed URLs
// (/static/<hash>/<path>), so they can be cached for a year and still
// change the moment a file does.
type staticFiles struct {
	fsys   fs.FS
	hashes map[string]string // path → short content hash
}

func newStaticFiles() (*staticFiles, error) {
	sub, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	sf := &staticFiles{fsys: sub, hashes: map[string]string{}}
	err = fs.WalkDir(sub, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasSuffix(p, ".sh") {
			return nil // tooling that lives next to the assets, not an asset
		}
		b, err := fs.ReadFile(sub, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		sf.hashes[p] = hex.EncodeToString(sum[:])[:12]
		return nil
	})
	return sf, err
}

// url returns the cache-busting URL of an asset.
func (sf *staticFiles) url(name string) string {
	if h, ok := sf.hashes[name]; ok {
		return "/static/" + h + "/" + name
	}
	return "/static/missing/" + name
}

// Static serves /static/<hash>/<path>. A matching hash is cached for a
// year as immutable; a stale hash still gets the file, briefly cached.
func (s *Site) Static() http.Handler {
	sf := s.static
	files := http.FileServerFS(sf.fsys)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest := strings.TrimPrefix(r.URL.Path, "/static/")
		hash, name, ok := strings.Cut(rest, "/")
		want, known := sf.hashes[name]
		if !ok || !known {
			s.NotFound().ServeHTTP(w, r)
			return
		}
		if hash == want {
			w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			w.Header().Set("Cache-Control", "public, max-age=60")
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/" + name
		files.ServeHTTP(w, r2)
	})
}
