package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// newSubscription records a subscription's checkout for u on plan.
func newSubscription(t *testing.T, st *store.Store, u store.User, plan string, n int) store.Subscription {
	t.Helper()
	ctx := context.Background()
	p, err := st.PlanByCode(ctx, plan)
	require.NoError(t, err)
	sub, err := st.CreateSubscription(ctx, store.NewSubscription{UserID: u.ID, Plan: p,
		CheckoutSessionID: fmt.Sprintf("cs_sub_%d_%d", u.ID, n), CheckoutRef: fmt.Sprintf("ref_%d_%d_abcdefgh", u.ID, n), CustomerID: fmt.Sprintf("cus_%d", u.ID)})
	require.NoError(t, err)
	return sub
}

// The catalog sells Basic (1,000 credits a month) and Pro (2,500 a month
// at a better rate per credit).
func TestPlansSellBasicAndProAtABetterRate(t *testing.T) {
	t.Parallel()
	st := storetest.NewStore(t)
	plans, err := st.Plans(context.Background())
	require.NoError(t, err)
	require.Len(t, plans, 2)
	basic, pro := plans[0], plans[1]
	require.Equal(t, []string{"basic", "pro"}, []string{basic.Code, pro.Code})
	require.Equal(t, int64(1000), basic.CreditsPerPeriod)
	require.Equal(t, int64(2500), pro.CreditsPerPeriod)
	// pro's price per credit is lower: pro/2500 < basic/1000.
	require.Less(t, pro.PriceMinor*basic.CreditsPerPeriod, basic.PriceMinor*pro.CreditsPerPeriod)
}

// A user has at most one live subscription: the database refuses a second
// one's activation, whichever path (checkout, invoice, event) tries it.
func TestOneLiveSubscriptionPerUserIsAConstraint(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	a, b := newSubscription(t, st, u, "basic", 1), newSubscription(t, st, u, "pro", 2)
	start := func(sub store.Subscription, stripeID string) error {
		return st.InTx(ctx, func(tx pgx.Tx) error {
			if err := store.LinkSubscription(ctx, tx, &sub, stripeID); err != nil {
				return err
			}
			_, err := store.StartSubscription(ctx, tx, sub.ID)
			return err
		})
	}
	require.NoError(t, start(a, "sub_a"))
	err := start(b, "sub_b")
	require.Error(t, err)
	require.Contains(t, err.Error(), "subscriptions_one_live")
	// Once the first ended, the second may start.
	require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
		_, err := store.ApplySubscriptionState(ctx, tx, a.ID, store.SubscriptionState{Status: store.SubCanceled, At: time.Now()})
		return err
	}))
	require.NoError(t, start(b, "sub_b"))
}

// Events arrive in any order: an older state changes nothing, the period
// only moves forward, and an end applies whenever it comes and stays.
func TestSubscriptionStateNeverMovesBackwards(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	sub := newSubscription(t, st, u, "basic", 1)
	t0 := time.Now().Truncate(time.Second)
	p1s, p1e := t0, t0.AddDate(0, 1, 0)
	p2s, p2e := p1e, p1e.AddDate(0, 1, 0)
	apply := func(s store.SubscriptionState) bool {
		var applied bool
		require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) (err error) {
			if err := store.LinkSubscription(ctx, tx, &sub, "sub_order"); err != nil {
				return err
			}
			applied, err = store.ApplySubscriptionState(ctx, tx, sub.ID, s)
			return err
		}))
		return applied
	}
	load := func() store.Subscription {
		s, err := st.UserSubscription(ctx, u.ID, sub.ID)
		require.NoError(t, err)
		return s
	}
	require.True(t, apply(store.SubscriptionState{Status: store.SubActive, PeriodStart: &p2s, PeriodEnd: &p2e, At: t0.Add(2 * time.Second)}))
	// An older event (the first period, set to cancel) is not applied.
	require.False(t, apply(store.SubscriptionState{Status: store.SubActive, PeriodStart: &p1s, PeriodEnd: &p1e, CancelAtPeriodEnd: true, At: t0}))
	got := load()
	require.Equal(t, p2e.Unix(), got.CurrentPeriodEnd.Unix())
	require.False(t, got.CancelAtPeriodEnd)
	// A newer one with an older period keeps the later period.
	require.True(t, apply(store.SubscriptionState{Status: store.SubPastDue, PeriodStart: &p1s, PeriodEnd: &p1e, At: t0.Add(3 * time.Second)}))
	got = load()
	require.Equal(t, store.SubPastDue, got.Status)
	require.Equal(t, p2e.Unix(), got.CurrentPeriodEnd.Unix())
	// An end applies even when older than the state recorded, and stays.
	require.True(t, apply(store.SubscriptionState{Status: store.SubCanceled, At: t0.Add(time.Second)}))
	require.True(t, apply(store.SubscriptionState{Status: store.SubActive, At: t0.Add(4 * time.Second)}))
	got = load()
	require.Equal(t, store.SubCanceled, got.Status)
	require.NotNil(t, got.CanceledAt)
	// A paid period never reopens an ended subscription.
	require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
		return store.ExtendSubscriptionPeriod(ctx, tx, sub.ID, p2e, p2e.AddDate(0, 1, 0))
	}))
	require.Equal(t, store.SubCanceled, load().Status)
}

// A subscription's paid invoice is a payment of its own kind: the
// database refuses one without its invoice, subscription and period, and
// a pack's payment with them; the same invoice is recorded once.
func TestInvoicePaymentsAreConstrained(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	sub := newSubscription(t, st, u, "pro", 1)
	end := time.Now().Add(30 * 24 * time.Hour)
	var first store.Payment
	require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
		g, err := store.Grant(ctx, tx, store.NewGrant{UserID: u.ID, Kind: store.GrantSubscription, Amount: 2500, ExpiresAt: &end, SourceKind: "invoice", SourceID: "in_c1"})
		if err != nil {
			return err
		}
		ip := store.InvoicePayment{Subscription: sub, InvoiceID: "in_c1", PaymentIntentID: "pi_c1", AmountMinor: sub.PriceMinor, Currency: "usd",
			PeriodStart: time.Now(), PeriodEnd: end, GrantID: g.GrantID, PaidAt: time.Now()}
		var created bool
		if first, created, err = store.RecordInvoicePayment(ctx, tx, ip); err != nil || !created {
			return fmt.Errorf("first record: created %v, %w", created, err)
		}
		again, created, err := store.RecordInvoicePayment(ctx, tx, ip)
		if err != nil || created || again.ID != first.ID {
			return fmt.Errorf("second record: created %v, id %d, %w", created, again.ID, err)
		}
		return nil
	}))
	require.Equal(t, "subscription", first.Product)
	require.Equal(t, "pro", *first.PlanCode)
	require.Equal(t, "", first.CheckoutSessionID)
	for name, sql := range map[string]string{
		"payments_subscription_has_invoice":  `UPDATE payments SET invoice_id = NULL WHERE id = $1`,
		"payments_invoice_only_subscription": `UPDATE payments SET product = 'pack', pack_code = 'pack_100' WHERE id = $1`,
	} {
		_, err := st.Pool().Exec(ctx, sql, first.ID)
		require.Error(t, err, name)
		require.Contains(t, err.Error(), name)
	}
}

// A Cancel and a Keep clicked within one second: the provider's events of
// that second or the next (stamped in whole seconds, applied in either
// order) do not change back what the user chose last; a later event does.
func TestTheLastRenewalChoiceHoldsAgainstEventsOfItsSecond(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	sub := newSubscription(t, st, u, "basic", 1)
	require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
		if err := store.LinkSubscription(ctx, tx, &sub, "sub_choice"); err != nil {
			return err
		}
		_, err := store.StartSubscription(ctx, tx, sub.ID)
		return err
	}))
	require.NoError(t, st.RecordCancelAtPeriodEnd(ctx, sub.ID, true))
	require.NoError(t, st.RecordCancelAtPeriodEnd(ctx, sub.ID, false))
	got, err := st.UserSubscription(ctx, u.ID, sub.ID)
	require.NoError(t, err)
	second := *got.RenewalSetAt
	apply := func(cancel bool, at time.Time) {
		require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
			_, err := store.ApplySubscriptionState(ctx, tx, sub.ID, store.SubscriptionState{Status: store.SubActive, CancelAtPeriodEnd: cancel, At: at})
			return err
		}))
	}
	// The Keep's event, then the Cancel's, both of that second.
	apply(false, second)
	apply(true, second)
	got, err = st.UserSubscription(ctx, u.ID, sub.ID)
	require.NoError(t, err)
	require.False(t, got.CancelAtPeriodEnd, "an event of the click's second undid the last choice")
	// Nor one of the next second (a second's boundary, the clocks' drift).
	apply(true, second.Add(time.Second))
	got, err = st.UserSubscription(ctx, u.ID, sub.ID)
	require.NoError(t, err)
	require.False(t, got.CancelAtPeriodEnd)
	// A change made later (Stripe's dashboard) applies.
	apply(true, second.Add(2*time.Second))
	got, err = st.UserSubscription(ctx, u.ID, sub.ID)
	require.NoError(t, err)
	require.True(t, got.CancelAtPeriodEnd)
}

// paidSubscription starts a subscription for a new user on plan with one
// invoice paid at each of paidAt, and applies state (when not empty) at
// the last invoice's time plus a second.
func paidSubscription(t *testing.T, st *store.Store, plan string, state store.SubscriptionState, paidAt ...time.Time) store.Subscription {
	t.Helper()
	ctx := context.Background()
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	sub := newSubscription(t, st, u, plan, 1)
	require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
		if err := store.LinkSubscription(ctx, tx, &sub, fmt.Sprintf("sub_%d", sub.ID)); err != nil {
			return err
		}
		if _, err := store.StartSubscription(ctx, tx, sub.ID); err != nil {
			return err
		}
		for i, at := range paidAt {
			end := at.AddDate(0, 1, 0)
			src := fmt.Sprintf("in_%d_%d", sub.ID, i)
			// A grant cannot be made expired; its expiry counts for nothing here.
			expires := end
			if soon := time.Now().Add(time.Hour); end.Before(soon) {
				expires = soon
			}
			g, err := store.Grant(ctx, tx, store.NewGrant{UserID: u.ID, Kind: store.GrantSubscription, Amount: sub.CreditsPerPeriod, ExpiresAt: &expires, SourceKind: "invoice", SourceID: src})
			if err != nil {
				return err
			}
			if _, _, err := store.RecordInvoicePayment(ctx, tx, store.InvoicePayment{Subscription: sub, InvoiceID: src, AmountMinor: sub.PriceMinor,
				Currency: sub.Currency, PeriodStart: at, PeriodEnd: end, GrantID: g.GrantID, PaidAt: at}); err != nil {
				return err
			}
			if err := store.ExtendSubscriptionPeriod(ctx, tx, sub.ID, at, end); err != nil {
				return err
			}
		}
		if state.Status == "" {
			return nil
		}
		state.At = paidAt[len(paidAt)-1].Add(time.Second)
		_, err := store.ApplySubscriptionState(ctx, tx, sub.ID, state)
		return err
	}))
	return sub
}

// Subscription analytics count each plan's live subscriptions now (active,
// past due, set to end, what they bill a month) and, over a range of days,
// those that started (their first invoice paid in it; a renewal is no
// start) and ended; a checkout never paid counts nowhere.
func TestSubscriptionsSinceCountsLiveStartedAndEnded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	day := func(n int) time.Time { return time.Now().UTC().AddDate(0, 0, -n) }
	ended := func(n int) store.SubscriptionState {
		at := day(n)
		return store.SubscriptionState{Status: store.SubCanceled, CanceledAt: &at}
	}
	// Basic: one live since 40 days, renewed 10 days ago, set to end; one
	// started 3 days ago and ended yesterday; one started 20 days ago and
	// ended 15 days ago. Pro: one started 2 days ago, past due. Basic again:
	// one started 5 days ago, ended at the simulator's clock's time.
	paidSubscription(t, st, "basic", store.SubscriptionState{Status: store.SubActive, CancelAtPeriodEnd: true}, day(40), day(10))
	paidSubscription(t, st, "basic", ended(1), day(3))
	paidSubscription(t, st, "basic", ended(15), day(20))
	paidSubscription(t, st, "pro", store.SubscriptionState{Status: store.SubPastDue}, day(2))
	// The simulator's clock ends a period ahead of time: dated later, the
	// end counts as of now.
	paidSubscription(t, st, "basic", ended(-30), day(5))
	newSubscription(t, st, storetest.NewUser(t, st, storetest.UserOpts{}), "pro", 1)

	type row struct {
		plan                                string
		active, pastDue, canceling, monthly int64
		started, ended                      int64
	}
	rows := func(days int) []row {
		t.Helper()
		got, err := st.SubscriptionsSince(ctx, day(days-1))
		require.NoError(t, err)
		var out []row
		for _, p := range got {
			require.Equal(t, "usd", p.Currency)
			out = append(out, row{p.PlanCode, p.Active, p.PastDue, p.Canceling, p.MonthlyMinor, p.Started, p.Ended})
		}
		return out
	}
	require.Equal(t, []row{{"basic", 1, 0, 1, 1500, 2, 2}, {"pro", 0, 1, 0, 3000, 1, 0}}, rows(7))
	require.Equal(t, []row{{"basic", 1, 0, 1, 1500, 4, 3}, {"pro", 0, 1, 0, 3000, 1, 0}}, rows(60))
	// Today alone: the live ones, and the end dated later.
	require.Equal(t, []row{{"basic", 1, 0, 1, 1500, 0, 1}, {"pro", 0, 1, 0, 3000, 0, 0}}, rows(1))

	// A plan no longer sold keeps a row while something counts.
	_, err := st.Pool().Exec(ctx, `UPDATE plans SET active = false WHERE code = 'pro'`)
	require.NoError(t, err)
	require.Equal(t, []row{{"basic", 1, 0, 1, 1500, 0, 1}, {"pro", 0, 1, 0, 3000, 0, 0}}, rows(1))
	_, err = st.Pool().Exec(ctx, `UPDATE subscriptions SET status = 'canceled', canceled_at = now() - interval '3 days' WHERE plan_code = 'pro' AND status = 'past_due'`)
	require.NoError(t, err)
	require.Equal(t, []row{{"basic", 1, 0, 1, 1500, 0, 1}}, rows(1))
}

// A switch is recorded only once the provider took it, only for a live
// subscription, between plans of one currency and different prices; the
// database refuses a next plan that is the plan itself or half recorded.
func TestScheduleSwitchIsRecordedOnlyWhenTheProviderTookIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	sub := paidSubscription(t, st, "basic", store.SubscriptionState{}, time.Now().Add(-time.Hour))
	pro, err := st.PlanByCode(ctx, "pro")
	require.NoError(t, err)
	basic, err := st.PlanByCode(ctx, "basic")
	require.NoError(t, err)
	next := func() *string {
		s, err := st.SubscriptionByID(ctx, sub.ID)
		require.NoError(t, err)
		return s.NextPlanCode
	}
	told := 0
	tell := func() error { told++; return nil }

	refused := errors.New("provider unreachable")
	_, err = st.ScheduleSwitch(ctx, sub.ID, pro, func() error { return refused })
	require.ErrorIs(t, err, refused)
	require.Nil(t, next(), "not recorded when the provider did not take it")

	changed, err := st.ScheduleSwitch(ctx, sub.ID, pro, tell)
	require.NoError(t, err)
	require.True(t, changed.Changed)
	require.Equal(t, "pro", *next())
	changed, err = st.ScheduleSwitch(ctx, sub.ID, pro, tell)
	require.NoError(t, err)
	require.False(t, changed.Changed)
	require.Equal(t, &store.BilledPlan{Code: "pro", PriceMinor: pro.PriceMinor, CreditsPerPeriod: pro.CreditsPerPeriod}, changed.PrevNext, "the plan chosen before, read under the lock")
	require.Equal(t, 1, told, "nothing told when nothing changes")

	euro := pro
	euro.Currency = "eur"
	_, err = st.ScheduleSwitch(ctx, sub.ID, euro, tell)
	require.Equal(t, store.KindConflict, store.ErrorKind(err))
	same := pro
	same.PriceMinor = basic.PriceMinor
	_, err = st.ScheduleSwitch(ctx, sub.ID, same, tell)
	require.Equal(t, store.KindConflict, store.ErrorKind(err))

	for name, sql := range map[string]string{
		"subscriptions_next_plan": `UPDATE subscriptions SET next_plan_code = plan_code, next_price_minor = price_minor WHERE id = $1`,
		"half recorded":           `UPDATE subscriptions SET next_price_minor = NULL WHERE id = $1`,
	} {
		_, err := st.Pool().Exec(ctx, sql, sub.ID)
		require.Error(t, err, name)
		require.Contains(t, err.Error(), "subscriptions_next_plan", name)
	}

	changed, err = st.ScheduleSwitch(ctx, sub.ID, basic, tell)
	require.NoError(t, err)
	require.True(t, changed.Changed)
	require.Nil(t, next())

	// Past due (read under the lock): refused, the provider not asked.
	_, err = st.Pool().Exec(ctx, `UPDATE subscriptions SET status = 'past_due' WHERE id = $1`, sub.ID)
	require.NoError(t, err)
	_, err = st.ScheduleSwitch(ctx, sub.ID, pro, tell)
	require.ErrorIs(t, err, store.ErrOverdue)
	require.Nil(t, next())

	_, err = st.Pool().Exec(ctx, `UPDATE subscriptions SET status = 'canceled', canceled_at = now() WHERE id = $1`, sub.ID)
	require.NoError(t, err)
	_, err = st.ScheduleSwitch(ctx, sub.ID, pro, tell)
	require.ErrorIs(t, err, store.ErrNotFound)
	require.Equal(t, 2, told)
}

// A subscription that switched plans counts its start under the plan its
// first invoice paid for, and is live under the plan it is on now.
func TestASwitchedSubscriptionStartedOnItsFirstPlan(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	sub := paidSubscription(t, st, "basic", store.SubscriptionState{}, time.Now().AddDate(0, 0, -3))
	require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
		now, err := store.ApplyBilledPlan(ctx, tx, sub.ID, store.BilledPlan{Code: "pro", PriceMinor: 3000, CreditsPerPeriod: 2500})
		if err != nil {
			return err
		}
		if now.PlanCode != "pro" || now.NextPlanCode == nil || *now.NextPlanCode != "basic" || *now.NextPriceMinor != 1500 {
			return fmt.Errorf("after the billed plan: %+v", now)
		}
		end := time.Now().AddDate(0, 1, 0)
		g, err := store.Grant(ctx, tx, store.NewGrant{UserID: sub.UserID, Kind: store.GrantSubscription, Amount: 2500, ExpiresAt: &end, SourceKind: "invoice", SourceID: "in_switched"})
		if err != nil {
			return err
		}
		_, _, err = store.RecordInvoicePayment(ctx, tx, store.InvoicePayment{Subscription: now, InvoiceID: "in_switched", AmountMinor: 3000,
			Currency: "usd", PeriodStart: time.Now(), PeriodEnd: end, GrantID: g.GrantID, PaidAt: time.Now()})
		return err
	}))
	got, err := st.SubscriptionsSince(ctx, time.Now().UTC().AddDate(0, 0, -6))
	require.NoError(t, err)
	require.Len(t, got, 2)
	basic, pro := got[0], got[1]
	require.Equal(t, []int64{0, 1, 0}, []int64{basic.Live(), basic.Started, basic.Ended}, "started on Basic")
	require.Equal(t, []int64{1, 0, 3000}, []int64{pro.Live(), pro.Started, pro.MonthlyMinor}, "live on Pro")
	live, err := st.LiveSubscriptions(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(0), live[0].Started+live[1].Started+live[0].Ended+live[1].Ended, "live counts only")
	require.Equal(t, int64(1), live[1].Live())
}
