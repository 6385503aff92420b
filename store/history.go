package store

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// HistoryItem is one line of a user's credit history: a grant, an expiry,
// a clawback, an adjustment, or a usage with the grants that paid for it.
type HistoryItem struct {
	Kind      string // an entry kind
	Credits   int64  // signed: positive adds, negative takes
	CreatedAt time.Time
	Reason    string
	// For single-grant items.
	GrantID        int64
	GrantKind      string
	GrantExpiresAt *time.Time
	// For usages, and for a removal by support drawing on several grants
	// (Drawn; GrantKind is then empty when the grants' kinds differ).
	UsageID int64
	Service string
	Drawn   []Drawn
	// ByOwner: the account's owner caused this entry (credits forfeited when
	// they deleted the account, ForfeitCredits), not support.
	ByOwner bool
	// PaymentID is the purchase a grant line's credits were bought with
	// (0: none), so that the line can be matched to the payments list.
	PaymentID int64
}

// HistoryPage is one page of history, newest first.
type HistoryPage struct {
	Items []HistoryItem
	// NextCursor continues with older items (0: no more).
	NextCursor int64
	// NewerAfter continues with newer items, through HistoryNewer (0: this
	// is the newest page).
	NewerAfter int64
}

type historyRow struct {
	ID             int64      `db:"id"`
	Kind           string     `db:"kind"`
	Amount         int64      `db:"amount"`
	CreatedAt      time.Time  `db:"created_at"`
	Reason         *string    `db:"reason"`
	GrantID        int64      `db:"grant_id"`
	GrantKind      string     `db:"grant_kind"`
	GrantExpiresAt *time.Time `db:"grant_expires_at"`
	GrantCreatedAt time.Time  `db:"grant_created_at"`
	UsageID        *int64     `db:"usage_id"`
	Service        *string    `db:"service"`
	ByOwner        bool       `db:"by_owner"`
}

// drawn is what the entry took from its grant.
func (e historyRow) drawn() Drawn {
	return Drawn{GrantID: e.GrantID, Kind: e.GrantKind, Credits: -e.Amount, GrantExpiresAt: e.GrantExpiresAt, GrantCreatedAt: e.GrantCreatedAt}
}

// historyQuery selects the history rows of the entries that inner (a
// query over ledger_entries) picks. The entries are picked first and
// joined after: joined in one query, PostgreSQL would apply the user to
// usages as well and could read all of a heavy user's usages to match
// one page of entries.
func historyQuery(inner, order string) string {
	return `
SELECT e.id, e.kind, e.amount, e.created_at, e.reason, e.grant_id,
       g.kind AS grant_kind, g.expires_at AS grant_expires_at, g.created_at AS grant_created_at, e.usage_id, s.name AS service,
       (e.actor_user_id IS NOT DISTINCT FROM e.user_id AND e.reason IS NOT DISTINCT FROM '` + ForfeitReason + `') AS by_owner
  FROM (` + inner + `) e
  JOIN grants g ON g.id = e.grant_id
  LEFT JOIN usages u ON u.user_id = e.user_id AND u.id = e.usage_id
  LEFT JOIN services s ON s.id = u.service_id` + order
}

// maxRemovalTail bounds how many entries History reads to complete a
// removal that a page cut through (a removal drawing on more grants than
// this is split across pages).
const maxRemovalTail = 500

// History returns up to about limit items older than cursor (0: newest),
// reading only the entries shown: its cost does not grow with the length of
// the history. The entries of one usage are never split across pages.
//
// Its queries are planned for the user at hand (customPlan): a generic
// plan, made once for "any user", walks the primary key backwards through
// other users' entries when one heavy user dominates the statistics.
func (s *Store) History(ctx context.Context, userID, cursor int64, limit int) (HistoryPage, error) {
	first := cursor <= 0
	if first {
		cursor = 1<<63 - 1
	}
	// One entry more than the page: it tells whether older entries exist
	// and whether the page cuts through a use or a removal.
	rows, err := s.pool.Query(ctx, historyQuery(`SELECT * FROM ledger_entries
 WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3`, ` ORDER BY e.id DESC`), customPlan, userID, cursor, limit+1)
	if err != nil {
		return HistoryPage{}, err
	}
	entries, err := pgx.CollectRows(rows, pgx.RowToStructByName[historyRow])
	if err != nil || len(entries) == 0 {
		return HistoryPage{}, err
	}
	entries, older, err := s.completeGroup(ctx, userID, entries, limit, true)
	if err != nil {
		return HistoryPage{}, err
	}
	var newer *bool
	if first {
		newer = new(bool)
	}
	return s.historyPage(ctx, userID, entries, older, newer)
}

// HistoryNewer returns the page of about limit items newer than the entry
// after (a page's NewerAfter), completing the newest usage or removal the
// page would cut through. Where the entries newer than after are all on the
// newest page (History's first), it is that page.
func (s *Store) HistoryNewer(ctx context.Context, userID, after int64, limit int) (HistoryPage, error) {
	rows, err := s.pool.Query(ctx, historyQuery(`SELECT * FROM ledger_entries
 WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3`, ` ORDER BY e.id`), customPlan, userID, after, limit+1)
	if err != nil {
		return HistoryPage{}, err
	}
	entries, err := pgx.CollectRows(rows, pgx.RowToStructByName[historyRow])
	if err != nil {
		return HistoryPage{}, err
	}
	if len(entries) <= limit {
		return s.History(ctx, userID, 0, limit)
	}
	// The newest page can hold more than limit entries (it completes the
	// use or removal its last line cuts through). Where every entry newer
	// than after is on it, Newer goes back to it, the page Older came from
	// (it showed a page of its own, which repeated most of the newest).
	newest, err := s.History(ctx, userID, 0, limit)
	if err != nil {
		return HistoryPage{}, err
	}
	if newest.NextCursor == 0 || entries[0].ID >= newest.NextCursor {
		return newest, nil
	}
	entries, newer, err := s.completeGroup(ctx, userID, entries, limit, false)
	if err != nil {
		return HistoryPage{}, err
	}
	slices.Reverse(entries)
	return s.historyPage(ctx, userID, entries, nil, newer)
}

// completeGroup trims entries, read one past limit in one direction (down:
// newest first; up: oldest first), to the page, and completes the use or
// removal by support that the page would cut through: the entry past the
// page belongs to the same one as the page's last. A user's entries of one
// use or one removal are consecutive among the user's (written in one
// statement under the account's lock). It answers whether entries exist
// beyond the page in that direction, or nil when it read more and does not
// know.
func (s *Store) completeGroup(ctx context.Context, userID int64, entries []historyRow, limit int, down bool) ([]historyRow, *bool, error) {
	beyond := len(entries) > limit
	if !beyond {
		return entries, &beyond, nil
	}
	next := entries[limit]
	entries = entries[:limit]
	last := entries[len(entries)-1]
	cmpID, order := "<", " DESC"
	if !down {
		cmpID, order = ">", ""
	}
	switch {
	case last.UsageID != nil && next.UsageID != nil && *next.UsageID == *last.UsageID:
		rows, err := s.pool.Query(ctx, historyQuery(`SELECT * FROM ledger_entries
 WHERE user_id = $1 AND usage_id = $2 AND id `+cmpID+` $3`, ``), customPlan, userID, *last.UsageID, last.ID)
		if err != nil {
			return nil, nil, err
		}
		rest, err := pgx.CollectRows(rows, pgx.RowToStructByName[historyRow])
		if err != nil {
			return nil, nil, err
		}
		// Sorted here, not by the query: "ORDER BY id" would let the planner
		// walk the primary key instead of the usage index.
		slices.SortFunc(rest, func(a, b historyRow) int {
			if down {
				return cmp.Compare(b.ID, a.ID)
			}
			return cmp.Compare(a.ID, b.ID)
		})
		return append(entries, rest...), nil, nil
	case last.isRemoval() && next.sameRemoval(last):
		// A removal's other entries are the same transaction's (same
		// instant, same reason), next to it. Read a bounded run and keep
		// those: a filter in SQL would scan the whole rest of the history
		// when there are none.
		rows, err := s.pool.Query(ctx, historyQuery(`SELECT * FROM ledger_entries
 WHERE user_id = $1 AND id `+cmpID+` $2 ORDER BY id`+order+` LIMIT $3`, ` ORDER BY e.id`+order), customPlan, userID, last.ID, maxRemovalTail)
		if err != nil {
			return nil, nil, err
		}
		rest, err := pgx.CollectRows(rows, pgx.RowToStructByName[historyRow])
		if err != nil {
			return nil, nil, err
		}
		for _, e := range rest {
			if !e.sameRemoval(last) {
				break
			}
			entries = append(entries, e)
		}
		return entries, nil, nil
	}
	return entries, &beyond, nil
}

// isRemoval says whether the entry is part of a removal by support (or a
// forfeiture), which draws like a spend: one entry per grant, all in one
// transaction, shown as one line.
func (e historyRow) isRemoval() bool {
	return e.UsageID == nil && e.Kind == "adjust" && e.Amount < 0 && e.Reason != nil
}

// sameRemoval says whether e belongs to the removal that other belongs to:
// same transaction instant, reason and cause.
func (e historyRow) sameRemoval(other historyRow) bool {
	return e.isRemoval() && other.isRemoval() && *e.Reason == *other.Reason &&
		e.CreatedAt.Equal(other.CreatedAt) && e.ByOwner == other.ByOwner
}

// historyPage groups entries (newest first, no usage or removal cut
// through) into a page's items, and finds whether older and newer entries
// exist where older or newer (nil: unknown) does not say.
func (s *Store) historyPage(ctx context.Context, userID int64, entries []historyRow, older, newer *bool) (HistoryPage, error) {
	var page HistoryPage
	for _, e := range entries {
		if e.UsageID != nil {
			if n := len(page.Items); n > 0 && page.Items[n-1].UsageID == *e.UsageID {
				it := &page.Items[n-1]
				it.Credits += e.Amount
				// Entries come newest first: drawn is put in the order
				// drawn below (prepended here, a use drawing on 16,000
				// grants copied its list 16,000 times: 3 s a page).
				it.Drawn = append(it.Drawn, e.drawn())
				continue
			}
		}
		// One removal by support (or forfeiture) draws like a spend, one
		// entry per grant, all in one transaction: one line, as a use is.
		if e.UsageID == nil && e.Kind == "adjust" && e.Amount < 0 {
			if n := len(page.Items); n > 0 {
				it := &page.Items[n-1]
				if it.Kind == "adjust" && it.Credits < 0 && it.UsageID == 0 && it.CreatedAt.Equal(e.CreatedAt) &&
					e.Reason != nil && it.Reason == *e.Reason && it.ByOwner == e.ByOwner {
					it.Credits += e.Amount
					if it.GrantKind != e.GrantKind {
						it.GrantKind = ""
					}
					it.GrantExpiresAt = nil
					it.Drawn = append(it.Drawn, e.drawn())
					continue
				}
			}
		}
		it := HistoryItem{Kind: e.Kind, Credits: e.Amount, CreatedAt: e.CreatedAt, GrantID: e.GrantID,
			GrantKind: e.GrantKind, GrantExpiresAt: e.GrantExpiresAt, ByOwner: e.ByOwner}
		if e.Reason != nil {
			it.Reason = *e.Reason
		}
		if e.UsageID == nil && e.Kind == "adjust" && e.Amount < 0 {
			it.Drawn = []Drawn{e.drawn()}
		}
		if e.UsageID != nil {
			it.UsageID = *e.UsageID
			it.Drawn = []Drawn{e.drawn()}
			if e.Service != nil {
				it.Service = *e.Service
			}
		}
		page.Items = append(page.Items, it)
	}
	for i := range page.Items {
		slices.Reverse(page.Items[i].Drawn) // in the order drawn
	}
	oldest, newest := entries[len(entries)-1].ID, entries[0].ID
	if older == nil || newer == nil {
		var o, n bool
		err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM ledger_entries WHERE user_id = $1 AND id < $2),
       EXISTS (SELECT FROM ledger_entries WHERE user_id = $1 AND id > $3)`, customPlan, userID, oldest, newest).Scan(&o, &n)
		if err != nil {
			return HistoryPage{}, err
		}
		if older == nil {
			older = &o
		}
		if newer == nil {
			newer = &n
		}
	}
	if *older {
		page.NextCursor = oldest
	}
	if *newer {
		page.NewerAfter = newest
	}
	return page, s.attachPayments(ctx, userID, page.Items)
}

// attachPayments names the payment of each grant line bought with one. A
// query of its own, made only for a page with grant lines: joined into
// the page's query, payments made every page (most are a heavy user's
// uses) about a millisecond slower to plan and read.
func (s *Store) attachPayments(ctx context.Context, userID int64, items []HistoryItem) error {
	var grants []int64
	for _, it := range items {
		if it.Kind == EntryGrant {
			grants = append(grants, it.GrantID)
		}
	}
	if len(grants) == 0 {
		return nil
	}
	rows, err := s.pool.Query(ctx, `SELECT grant_id, id FROM payments WHERE user_id = $1 AND grant_id = ANY($2)`, userID, grants)
	if err != nil {
		return err
	}
	paid := map[int64]int64{}
	var g, p int64
	if _, err := pgx.ForEachRow(rows, []any{&g, &p}, func() error { paid[g] = p; return nil }); err != nil {
		return err
	}
	for i := range items {
		if items[i].Kind == EntryGrant {
			items[i].PaymentID = paid[items[i].GrantID]
		}
	}
	return nil
}
