package main

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store/storetest"
)

// With the database out of reach a page answers 503 with Retry-After (as
// the JSON API and /readyz do), not a 500 "something went wrong".
func TestPagesAnswer503WhenTheDatabaseIsUnavailable(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Mode: "api"})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	ta.app.pool.Close()

	for _, path := range []string{"/dashboard/credits", "/login"} {
		r := b.get(path)
		doc := acctErrorPage(t, r, http.StatusServiceUnavailable)
		require.Equal(t, "Briefly unavailable", acctText(doc, "#error-page h1"), path)
		require.Equal(t, "5", r.Header.Get("Retry-After"), path)
	}
}
