package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/quickscale/quickscale/store"
)

// devSeed is what `dev` prints after seeding.
type devSeed struct {
	AdminEmail    string
	AdminPassword string
}

// demoAdminEmail is the dev admin's address.
const demoAdminEmail = "admin@quickscale.localhost"

// demoServices are the services `dev` offers.
func demoServices() []store.Service {
	return []store.Service{
		{Slug: "image-resize", Name: "Image resize", Description: "Resize one image to any size.", CreditCost: 1, Active: true},
		{Slug: "pdf-render", Name: "PDF render", Description: "Render an HTML page to PDF.", CreditCost: 5, Active: true},
		{Slug: "transcribe", Name: "Transcription", Description: "Transcribe one minute of audio.", CreditCost: 10, Active: true},
		{Slug: "ai-summary", Name: "AI summary", Description: "Summarise a long document.", CreditCost: 25, Active: true},
	}
}

// seedDev adds the demo services and gives the demo admin a fresh random
// password, which `dev` prints.
func seedDev(ctx context.Context, st *store.Store) (*devSeed, error) {
	// Only the missing ones: a demo service an operator changed or
	// retired stays as they left it.
	for _, sv := range demoServices() {
		if _, err := st.AddServiceIfMissing(ctx, sv); err != nil {
			return nil, err
		}
	}
	password := store.NewSecret()[:16]
	hash, err := store.HashPassword(ctx, password)
	if err != nil {
		return nil, err
	}
	u, err := st.UserByEmail(ctx, demoAdminEmail)
	switch {
	case err == nil:
		// A new password ends the sessions signed in with the old one, as
		// every password change does.
		if _, err := st.SetPasswordHash(ctx, u.ID, hash, true); err != nil {
			return nil, err
		}
		if !u.IsAdmin() {
			// Demoted since the last start: the demo admin is an admin
			// again, and the audit log says so, as for any promotion.
			if err := st.InTx(ctx, func(tx pgx.Tx) error {
				if err := store.SetRole(ctx, tx, u.ID, store.RoleAdmin); err != nil {
					return err
				}
				return store.Audit(ctx, tx, nil, "user.promote", &u.ID, map[string]any{"role": store.RoleAdmin, "via": "dev start (the demo admin)"})
			}); err != nil {
				return nil, err
			}
		}
	case store.ErrorKind(err) == store.KindNotFound:
		if _, err := st.CreateUser(ctx, demoAdminEmail, hash, store.RoleAdmin, true); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("demo admin: %w", err)
	}
	return &devSeed{AdminEmail: demoAdminEmail, AdminPassword: password}, nil
}
