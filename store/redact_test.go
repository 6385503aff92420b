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
		"host=db password=s3cret user=u":                      "host=db password=xxxxx user=u",
		"host=db PASSWORD = 's3 cret' user=u":                 "host=db PASSWORD = xxxxx user=u",
		`host=db password='it\'s s3cret' dbname=qs`:           "host=db password=xxxxx dbname=qs",
		"postgres://db/qs?password=s3cret&pool_max_conns=abc": "postgres://db/qs?password=xxxxx&pool_max_conns=abc",
		"postgres://db/qs?sslpassword=s3cret&sslmode=require": "postgres://db/qs?sslmode=require&sslpassword=xxxxx",
		"postgres://u:pa/ss3@db:5432/qs":                      "postgres://u:xxxxx@db:5432/qs",
		"user:s3cret@db/qs":                                   "user:xxxxx@db/qs",
		"postgres://u:s3%zz@db/qs?password=s3cret":            "postgres://u:xxxxx@db/qs?password=xxxxx",
		"host=db sslpassword=s3cret":                          "host=db sslpassword=xxxxx",
	} {
		got := RedactURL(in)
		if got != want || strings.Contains(got, "s3") || strings.Contains(got, "ss@") {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
