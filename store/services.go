package store

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// Service is something users spend credits on.
type Service struct {
	ID          int64     `db:"id" json:"-"`
	Slug        string    `db:"slug" json:"slug"`
	Name        string    `db:"name" json:"name"`
	Description string    `db:"description" json:"description"`
	CreditCost  int64     `db:"credit_cost" json:"credit_cost"`
	Active      bool      `db:"active" json:"-"`
	CreatedAt   time.Time `db:"created_at" json:"-"`
}

var slugRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ValidSlug reports whether s can name a service.
func ValidSlug(s string) bool { return slugRE.MatchString(s) }

// UpsertService creates a service or updates the one with the same slug.
func (s *Store) UpsertService(ctx context.Context, sv Service) (Service, error) {
	return upsertService(ctx, s.pool, sv)
}

// ServiceChange is what an operator sets on a service: nil fields keep
// the service's current values. A new service needs Name and CreditCost;
// it starts active with no description unless told otherwise.
type ServiceChange struct {
	Slug        string
	Name        *string
	Description *string
	CreditCost  *int64
	Active      *bool
}

// SetService creates the service with c's slug or changes the fields c
// names, by an operator (actor nil for the CLI), written to the audit log
// in the same transaction with the values before and after, so that no
// change is lost to history. A change that changes nothing writes nothing
// and is reported as such (changed false).
func (s *Store) SetService(ctx context.Context, actor *int64, c ServiceChange, via string) (out Service, changed bool, err error) {
	err = s.InTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id, slug, name, description, credit_cost, active, created_at FROM services WHERE slug = $1 FOR UPDATE`, strings.TrimSpace(c.Slug))
		if err != nil {
			return err
		}
		before, err := pgx.CollectRows(rows, pgx.RowToStructByName[Service])
		if err != nil {
			return err
		}
		sv := Service{Slug: c.Slug, Active: true}
		details := map[string]any{"via": via}
		if len(before) == 1 {
			sv = before[0]
			details["before"] = serviceDetails(sv)
		} else if c.Name == nil || c.CreditCost == nil {
			return Errorf(KindInvalid, "A new service needs a name and a cost.")
		}
		if c.Name != nil {
			sv.Name = *c.Name
		}
		if c.Description != nil {
			sv.Description = *c.Description
		}
		if c.CreditCost != nil {
			sv.CreditCost = *c.CreditCost
		}
		if c.Active != nil {
			sv.Active = *c.Active
		}
		if len(before) == 1 && strings.TrimSpace(sv.Name) == before[0].Name && sv.Description == before[0].Description &&
			sv.CreditCost == before[0].CreditCost && sv.Active == before[0].Active {
			out = before[0]
			return nil
		}
		changed = true
		if out, err = upsertService(ctx, tx, sv); err != nil {
			return err
		}
		for k, v := range serviceDetails(out) {
			details[k] = v
		}
		return Audit(ctx, tx, actor, "service.set", nil, details)
	})
	return out, changed, err
}

func serviceDetails(sv Service) map[string]any {
	return map[string]any{"slug": sv.Slug, "name": sv.Name, "description": sv.Description, "credit_cost": sv.CreditCost, "active": sv.Active}
}

// Services lists every service, inactive ones included, by slug.
func (s *Store) Services(ctx context.Context) ([]Service, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, slug, name, description, credit_cost, active, created_at FROM services ORDER BY slug`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[Service])
}

// CheckServiceName refuses a service name that is not one line of 1 to 100
// visible characters (surrounding spaces aside).
func CheckServiceName(name string) error {
	name = strings.TrimSpace(name)
	switch {
	case BlankText(name):
		return Errorf(KindInvalid, "A service needs a name.")
	case !utf8.ValidString(name) || UnsafeLine(name):
		return Errorf(KindInvalid, "A service's name must be one line of visible text: no line breaks, control or hidden characters.")
	case utf8.RuneCountInString(name) > 100:
		return Errorf(KindInvalid, "A service's name is at most 100 characters.")
	}
	return nil
}

// CheckServiceDescription refuses a description that is not one line of
// text (it is shown under the name) or is over 1,000 characters; it may be
// empty.
func CheckServiceDescription(d string) error {
	switch {
	case !utf8.ValidString(d) || UnsafeLine(d):
		return Errorf(KindInvalid, "A service's description must be one line of visible text: no line breaks, control or hidden characters.")
	case utf8.RuneCountInString(d) > 1000:
		return Errorf(KindInvalid, "Keep a service's description to 1,000 characters or fewer.")
	}
	return nil
}

// checkService trims a service's slug and name and checks its fields.
func checkService(sv Service) (Service, error) {
	sv.Slug = strings.TrimSpace(sv.Slug)
	sv.Name = strings.TrimSpace(sv.Name)
	if !ValidSlug(sv.Slug) {
		return sv, Errorf(KindInvalid, "A service slug is 1-63 lowercase letters, digits and dashes, starting with a letter or digit.")
	}
	if err := CheckServiceName(sv.Name); err != nil {
		return sv, err
	}
	if err := CheckServiceDescription(sv.Description); err != nil {
		return sv, err
	}
	if sv.CreditCost < 0 || sv.CreditCost > MaxGrantCredits {
		return sv, Errorf(KindInvalid, "A service costs from 0 to 1,000,000,000 credits.")
	}
	return sv, nil
}

// AddServiceIfMissing adds sv unless a service with its slug exists,
// which then stays as it is (dev's demo services: an operator's change
// to one survives the next start). It reports whether sv was added.
func (s *Store) AddServiceIfMissing(ctx context.Context, sv Service) (bool, error) {
	sv, err := checkService(sv)
	if err != nil {
		return false, err
	}
	tag, err := s.pool.Exec(ctx, `INSERT INTO services (slug, name, description, credit_cost, active) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (slug) DO NOTHING`, sv.Slug, sv.Name, sv.Description, sv.CreditCost, sv.Active)
	return tag.RowsAffected() == 1, err
}

func upsertService(ctx context.Context, db DBTX, sv Service) (Service, error) {
	sv, err := checkService(sv)
	if err != nil {
		return sv, err
	}
	rows, err := db.Query(ctx, `
INSERT INTO services (slug, name, description, credit_cost, active) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (slug) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description,
       credit_cost = EXCLUDED.credit_cost, active = EXCLUDED.active
RETURNING id, slug, name, description, credit_cost, active, created_at`,
		sv.Slug, sv.Name, sv.Description, sv.CreditCost, sv.Active)
	if err != nil {
		return sv, err
	}
	out, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Service])
	if err != nil {
		return sv, fmt.Errorf("upsert service: %w", err)
	}
	return out, nil
}

// ActiveServices lists the services users can spend on, cheapest first.
func (s *Store) ActiveServices(ctx context.Context) ([]Service, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, slug, name, description, credit_cost, active, created_at
  FROM services WHERE active ORDER BY credit_cost, name`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[Service])
}
