package web

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"text/template/parse"
	"time"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/store"
)

//go:embed templates
var templateFS embed.FS

// templates holds one parsed set per page: the layouts and partials plus
// the page itself, so pages can each define "content" and "title".
type templates struct {
	pages  map[string]*template.Template
	dir    string // re-parse from here on each render when set (dev)
	static *staticFiles
}

func loadTemplates(dir string) (*templates, error) {
	t := &templates{dir: dir}
	pages, err := t.parse()
	if err != nil {
		return nil, err
	}
	t.pages = pages
	return t, nil
}

func (t *templates) fsys() fs.FS {
	if t.dir != "" {
		return os.DirFS(t.dir)
	}
	sub, _ := fs.Sub(templateFS, "templates")
	return sub
}

func (t *templates) parse() (map[string]*template.Template, error) {
	fsys := t.fsys()
	shared, err := fs.Glob(fsys, "layouts/*.html")
	if err != nil {
		return nil, err
	}
	partials, err := fs.Glob(fsys, "partials/*.html")
	if err != nil {
		return nil, err
	}
	shared = append(shared, partials...)
	pageFiles, err := fs.Glob(fsys, "pages/*.html")
	if err != nil {
		return nil, err
	}
	if len(pageFiles) == 0 {
		return nil, errors.New("no page templates found")
	}
	pages := make(map[string]*template.Template, len(pageFiles))
	for _, pf := range pageFiles {
		name := strings.TrimSuffix(path.Base(pf), ".html")
		tmpl, err := template.New(name).Funcs(t.funcs()).ParseFS(fsys, append(append([]string{}, shared...), pf)...)
		if err != nil {
			return nil, fmt.Errorf("page %s: %w", name, err)
		}
		if err := checkReferences(tmpl); err != nil {
			return nil, fmt.Errorf("page %s: %w", name, err)
		}
		if tmpl.Lookup("content") == nil {
			return nil, fmt.Errorf("page %s: defines no \"content\" block", name)
		}
		pages[name] = tmpl
	}
	return pages, nil
}

// checkReferences fails when a template calls {{template "x"}} for an x
// that is not defined, which html/template would only notice at run time.
func checkReferences(t *template.Template) error {
	var missing []string
	var walk func(n parse.Node)
	walk = func(n parse.Node) {
		switch n := n.(type) {
		case *parse.ListNode:
			if n == nil {
				return
			}
			for _, c := range n.Nodes {
				walk(c)
			}
		case *parse.TemplateNode:
			if t.Lookup(n.Name) == nil {
				missing = append(missing, n.Name)
			}
		case *parse.IfNode:
			walk(n.List)
			walk(n.ElseList)
		case *parse.RangeNode:
			walk(n.List)
			walk(n.ElseList)
		case *parse.WithNode:
			walk(n.List)
			walk(n.ElseList)
		}
	}
	for _, tt := range t.Templates() {
		if tt.Tree != nil {
			walk(tt.Tree.Root)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("refers to undefined template(s) %q", missing)
	}
	return nil
}

func (t *templates) lookup(page string) (*template.Template, error) {
	pages := t.pages
	if t.dir != "" {
		p, err := t.parse()
		if err != nil {
			return nil, err
		}
		pages = p
	}
	tmpl, ok := pages[page]
	if !ok {
		return nil, fmt.Errorf("no page template %q", page)
	}
	return tmpl, nil
}

func (t *templates) funcs() template.FuncMap {
	return template.FuncMap{
		"upper":        strings.ToUpper,
		"static":       func(name string) string { return t.static.url(name) },
		"credits":      formatInt,
		"ncredits":     func(n int64) string { return countNoun(n, "credit") },
		"money":        formatMoney,
		"amountinput":  amountInput,
		"disputelabel": disputeLabel,
		"within":       within,
		"derefstr":     func(p *string) string { return *p },
		"derefint":     func(p *int64) int64 { return *p },
		// A phone's keyboard for an amount: digits, with a decimal point
		// where the currency has cents.
		"amountmode": func(currency string) string {
			if billing.CurrencyDecimals(currency) == 0 {
				return "numeric"
			}
			return "decimal"
		},
		"refundeffect": func(buyer *string) string {
			if buyer == nil {
				return "The account was deleted and its credits forfeited, so none are taken back."
			}
			return "The buyer loses the same share of the credits it bought (what they spent already, or what expired, cannot be taken back)."
		},
		"isodate":    func(tm time.Time) string { return tm.UTC().Format("2006-01-02") },
		"sub":        func(a, b int64) int64 { return a - b },
		"payStatus":  paymentStatusWord,
		"date":       func(tm time.Time) string { return tm.UTC().Format("2 Jan 2006") },
		"datetime":   func(tm time.Time) string { return tm.UTC().Format(dateTimeLayout) },
		"expirytime": expiryTime,
		"isotime":    func(tm time.Time) string { return tm.UTC().Format(time.RFC3339) },
		"ago":        relativeTime,
		"deref":      func(t *time.Time) time.Time { return *t },
		"past":       func(t time.Time) bool { return !t.After(time.Now()) },
		"navMark":    navMark,
		"drawnTags":  drawnLabels,
		"drawnFirst": drawnFirst,
		"drawnRest":  drawnRest,
		"neg":        func(n int64) int64 { return -n },
		"title":      titleCase,
		"perCredit":  perCredit,
		"add":        func(a, b int) int { return a + b },
		"detail":     auditDetail,
		"userlinks":  userLinks,
		"dict": func(kv ...any) (map[string]any, error) {
			if len(kv)%2 != 0 {
				return nil, errors.New("dict needs key/value pairs")
			}
			m := make(map[string]any, len(kv)/2)
			for i := 0; i < len(kv); i += 2 {
				k, ok := kv[i].(string)
				if !ok {
					return nil, errors.New("dict keys must be strings")
				}
				m[k] = kv[i+1]
			}
			return m, nil
		},
	}
}

// signedOutUndone is the sign-in page's notice when a form was sent while
// signed out (RequireUser).
const signedOutUndone = "You were signed out, so that was not done. Sign in and try again."

// view is what every template gets: the common frame and the page's data.
type view struct {
	Title     string
	User      *store.User
	Flash     string
	Simulated bool
	Dev       bool
	Path      string
	// Page is the page template rendered ("settings"), whatever the
	// address (a form's POST answered with its page).
	Page string
	Data any
}

func (s *Site) newView(r *http.Request, title string, data any) view {
	v := view{
		Title:     title,
		User:      CurrentUser(r.Context()),
		Simulated: s.Simulated(),
		Dev:       s.cfg.Dev,
		Path:      r.URL.Path,
		Data:      data,
	}
	if hasSession(r) && !isPartialRequest(r) {
		v.Flash = s.popFlash(r)
	}
	if v.Flash == "" && r.URL.Path == "/login" && r.URL.Query().Get("undone") == "1" {
		v.Flash = signedOutUndone
	}
	return v
}

// isPartialRequest reports whether htmx asked for a fragment: not a
// boosted navigation, and not a history restore (Back to a page htmx no
// longer has cached, past its ten), which both want the whole page. A
// restore sends HX-Request without HX-Boosted, and used to get the bare
// content block: the page came back without its navbar and footer.
func isPartialRequest(r *http.Request) bool {
	return isHtmxRequest(r) && r.Header.Get("HX-Boosted") != "true"
}

// isHtmxRequest reports whether htmx made the request and will act on
// htmx's answers (a fragment, HX-Redirect). A history restore is not one:
// htmx swaps its answer in as a whole page, whatever headers it sent.
func isHtmxRequest(r *http.Request) bool {
	return r.Header.Get("HX-Request") == "true" && r.Header.Get("HX-History-Restore-Request") != "true"
}

// render writes a page: the whole layout, or only its "content" block for
// htmx fragment requests. Output is rendered into a buffer first so that a
// template error becomes a clean 500, never half a page.
func (s *Site) render(w http.ResponseWriter, r *http.Request, status int, page, title string, data any) {
	block := "base"
	if isPartialRequest(r) {
		block = "content"
	}
	s.renderBlock(w, r, status, page, block, title, data)
}

// renderBlock writes one named block of a page template.
func (s *Site) renderBlock(w http.ResponseWriter, r *http.Request, status int, page, block, title string, data any) {
	tmpl, err := s.tmpl.lookup(page)
	if err != nil {
		s.renderFailure(w, r, err)
		return
	}
	var buf bytes.Buffer
	v := s.newView(r, title, data)
	v.Page = page
	if err := tmpl.ExecuteTemplate(&buf, block, v); err != nil {
		s.renderFailure(w, r, fmt.Errorf("render %s/%s: %w", page, block, err))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	h.Set("Cache-Control", "no-store")
	h.Set("Vary", "HX-Request")
	if r.Method == http.MethodPost && status >= 400 && r.Header.Get("HX-Request") == "true" {
		// A boosted form's refusal (a wrong password, say) keeps the page's
		// address: pushing the form's action would leave one that a reload
		// cannot GET.
		h.Set("HX-Push-Url", "false")
	}
	w.WriteHeader(status)
	_, _ = buf.WriteTo(w)
}

// renderFailure is the last resort when the error page itself cannot render.
func (s *Site) renderFailure(w http.ResponseWriter, r *http.Request, err error) {
	s.logger.ErrorContext(r.Context(), "render failed", "err", err, "path", r.URL.Path)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	_, _ = w.Write([]byte("Something went wrong on our side. Please try again in a moment.\n"))
}

// userMention is how event details name a user ("user 4", "user #4").
var userMention = regexp.MustCompile(`\buser #?([0-9]{1,19})\b`)

// userLinks escapes text and links each user it names to the user's admin
// page, so support can go from an event to the customer in one click.
func userLinks(text string) template.HTML {
	escaped := template.HTMLEscapeString(text)
	return template.HTML(userMention.ReplaceAllString(escaped, `<a href="/admin/users/${1}">${0}</a>`))
}
