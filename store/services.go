package store

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

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
	sv.Slug = strings.TrimSpace(sv.Slug)
	switch {
	case !ValidSlug(sv.Slug):
		return sv, Errorf(KindInvalid, "A service slug is 1-63 lowercase letters, digits and dashes.")
	case strings.TrimSpace(sv.Name) == "":
		return sv, Errorf(KindInvalid, "A service needs a name.")
	case sv.CreditCost < 0:
		return sv, Errorf(KindInvalid, "A service cannot cost less than zero credits.")
	}
	rows, err := s.pool.Query(ctx, `
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
