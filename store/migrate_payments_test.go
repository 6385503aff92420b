package store_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// Migration 00022 on payments recorded before it: each payment takes its
// live buyer's address (a deleted buyer's stays none), and each refunded
// payment one refund row holding its totals and the time 00020 kept (none
// for a refund before 00020). Refunds after it add rows.
func TestMigration22KeepsPaymentsAddressesAndRefunds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrateUpTo(t, 21)
	st := store.New(pool, nil)
	live := storetest.NewUser(t, st, storetest.UserOpts{})
	gone := storetest.NewUser(t, st, storetest.UserOpts{})
	paidAt := time.Now().Add(-2 * time.Hour).UTC().Truncate(time.Microsecond)
	refundedAt := paidAt.Add(time.Hour)
	pay := func(u store.User, session string, refunded, clawed, short int64, at *time.Time) int64 {
		var id int64
		require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
			g, err := store.Grant(ctx, tx, store.NewGrant{UserID: u.ID, Kind: store.GrantPack, Amount: 500, SourceKind: "checkout_session", SourceID: session})
			if err != nil {
				return err
			}
			status := "succeeded"
			switch {
			case refunded == 2000:
				status = "refunded"
			case refunded > 0:
				status = "partially_refunded"
			}
			return tx.QueryRow(ctx, `
INSERT INTO payments (user_id, product, pack_code, credits, amount_minor, currency, status, checkout_session_id,
                      payment_intent_id, grant_id, paid_at, amount_refunded_minor, credits_clawed_back, clawback_shortfall, refunded_at)
VALUES ($1, 'pack', 'pack_500', 500, 2000, 'usd', $2, $3, 'pi_' || $3, $4, $5, $6, $7, $8, $9) RETURNING id`,
				u.ID, status, session, g.GrantID, paidAt, refunded, clawed, short, at).Scan(&id)
		}))
		return id
	}
	partly := pay(live, fmt.Sprintf("cs_m22_a_%d", live.ID), 700, 150, 25, &refundedAt)
	untouched := pay(live, fmt.Sprintf("cs_m22_b_%d", live.ID), 0, 0, 0, nil)
	before00020 := pay(gone, fmt.Sprintf("cs_m22_c_%d", gone.ID), 2000, 500, 0, nil)
	_, err := pool.Exec(ctx, `UPDATE users SET email = NULL, password_hash = NULL, deleted_at = now() WHERE id = $1`, gone.ID)
	require.NoError(t, err)

	res, err := store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.Equal(t, "00022_receipts_keep_what_was_billed.sql", res.App[0])
	pool.Reset()

	email := func(id int64) *string {
		var e *string
		require.NoError(t, pool.QueryRow(ctx, `SELECT buyer_email FROM payments WHERE id = $1`, id).Scan(&e))
		return e
	}
	require.Equal(t, live.Email, *email(partly))
	require.Equal(t, live.Email, *email(untouched))
	require.Nil(t, email(before00020), "a deleted buyer's payment took an address")

	refunds := func(id int64) []store.Refund {
		r, err := st.RefundsOf(ctx, id)
		require.NoError(t, err)
		return r
	}
	got := refunds(partly)
	require.Len(t, got, 1)
	require.Equal(t, store.Refund{ID: got[0].ID, AmountMinor: 700, CreditsTaken: 150, CreditsShort: 25, RefundedAt: got[0].RefundedAt}, got[0])
	require.True(t, got[0].RefundedAt.Equal(refundedAt), "refunded at %v, want %v", got[0].RefundedAt, refundedAt)
	require.Empty(t, refunds(untouched))
	got = refunds(before00020)
	require.Len(t, got, 1)
	require.Equal(t, int64(2000), got[0].AmountMinor)
	require.Nil(t, got[0].RefundedAt, "a refund before 00020 has no time")

	// A refund after it adds its own row.
	require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
		return store.RecordRefund(ctx, tx, store.RefundRecord{PaymentID: partly, TotalRefunded: 1000, TotalClawed: 225, TotalShortfall: 25, At: time.Now()})
	}))
	got = refunds(partly)
	require.Len(t, got, 2)
	require.Equal(t, int64(300), got[1].AmountMinor)
	require.Equal(t, int64(75), got[1].CreditsTaken)
	require.Zero(t, got[1].CreditsShort)
}
