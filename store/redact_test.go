package store

import (
	"strings"
	"testing"
)

// Errors quote connection strings; a password never shows, whether the
// string parses as a URL or not, or is in libpq's key=value form.
func TestRedactURLHidesPasswords(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"postgres://u:s3cret@db:5432/qs?sslmode=disable":      "postgres://u:xxxxx@db:5432/qs?sslmode=disable",
		"postgres://db:5432/qs":                               "postgres://db:5432/qs",
		"postgres://u@db/qs":                                  "postgres://u@db/qs",
		"postgres://u:s3cret@127.0.0.1:abc/x":                 "postgres://u:xxxxx@127.0.0.1:abc/x",
		"postgres://u:s3cret%zz@db/x":                         "postgres://u:xxxxx@db/x",
		"postgres://u:p@ss@db:abc/x":                          "postgres://u:xxxxx@db:abc/x",
		"smtp://u:s3cret%zz@mail:25":                          "smtp://u:xxxxx@mail:25",
		"postgres://postgres:my s3cret pw@127.0.0.1:5432/x":   "postgres://postgres:xxxxx@127.0.0.1:5432/x",
		"postgres://u:12?s3@host/db":                          "postgres://u:xxxxx@host/db",
		"postgres://u:12#s3@host/db":                          "postgres://u:xxxxx@host/db",
		"postgres://u:p@ss/s3word@host/db":                    "postgres://u:xxxxx@host/db",
		"postgres://u:pa/ss3@db:5432/qs":                      "postgres://u:xxxxx@db:5432/qs",
		"postgres://db/qs?password=s3cret&pool_max_conns=abc": "postgres://db/qs?password=xxxxx&pool_max_conns=abc",
		"postgres://db/qs?sslpassword=s3cret&sslmode=require": "postgres://db/qs?sslpassword=xxxxx&sslmode=require",
		"postgres://u:s3%zz@db/qs?password=s3cret":            "postgres://u:xxxxx@db/qs?password=xxxxx",
		"user:s3cret@db/qs":                                   "user:xxxxx@db/qs",
		"host=db password=s3cret user=u":                      "host=db password=xxxxx",
		"host=db password=my s3cret":                          "host=db password=xxxxx",
		"host=db PASSWORD = 's3 cret' user=u":                 "host=db PASSWORD = xxxxx user=u",
		`host=db password='it\'s s3cret' dbname=qs`:           "host=db password=xxxxx dbname=qs",
		"host=db sslpassword=s3cret":                          "host=db sslpassword=xxxxx",
		"host=db port=5432 dbname=qs":                         "host=db port=5432 dbname=qs",
	} {
		got := RedactURL(in)
		if got != want || strings.Contains(got, "s3") || strings.Contains(got, "ss@") {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
