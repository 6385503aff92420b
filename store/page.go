package store

import (
	"fmt"
	"slices"
)

// keysetPage trims rows read with LIMIT limit+1 (newest first, keyed by id)
// to one page: the rows to show, and the cursor of the next page — the id
// of the last row shown — or 0 when there is no next page.
func keysetPage[T any](rows []T, limit int, id func(T) int64) ([]T, int64) {
	if len(rows) <= limit {
		return rows, 0
	}
	rows = rows[:limit]
	return rows, id(rows[len(rows)-1])
}

// ListPage is one page of a list keyed by id, newest first.
type ListPage[T any] struct {
	Items []T
	// NextCursor continues with older items (0: no more).
	NextCursor int64
	// NewerAfter continues with newer items, passed as "after" (0: this is
	// the newest page).
	NewerAfter int64
}

// keysetList reads one page of a list keyed by idCol, newest first: the
// limit items older than cursor (0: the newest), or, given after > 0, the
// limit items right above after — the newest page instead when no more
// than limit are. fetch runs the list's query with cond added to its
// conditions and tail (ORDER BY, LIMIT) after them, their placeholders
// numbered after the n the query already uses, extra as their arguments.
func keysetList[T any](n int, idCol string, fetch func(cond, tail string, extra ...any) ([]T, error), id func(T) int64,
	cursor, after int64, limit int) (ListPage[T], error) {
	var p ListPage[T]
	p1, p2 := fmt.Sprintf("$%d", n+1), fmt.Sprintf("$%d", n+2)
	older, newer := idCol+" < "+p1, idCol+" > "+p1
	down, up := " ORDER BY "+idCol+" DESC LIMIT "+p2, " ORDER BY "+idCol+" LIMIT "+p2
	if after > 0 {
		rows, err := fetch(newer, up, after, limit+1)
		if err != nil {
			return p, err
		}
		if len(rows) > limit {
			rows = rows[:limit]
			slices.Reverse(rows)
			p.Items, p.NewerAfter = rows, id(rows[0])
			below, err := fetch(older, down, id(rows[len(rows)-1]), 1)
			if err != nil {
				return p, err
			}
			if len(below) > 0 {
				p.NextCursor = id(rows[len(rows)-1])
			}
			return p, nil
		}
		cursor = 0
	}
	paged := cursor > 0
	if !paged {
		cursor = 1<<63 - 1
	}
	rows, err := fetch(older, down, cursor, limit+1)
	if err != nil || len(rows) == 0 {
		return p, err
	}
	p.Items, p.NextCursor = keysetPage(rows, limit, id)
	if paged {
		above, err := fetch(newer, up, id(p.Items[0]), 1)
		if err != nil {
			return p, err
		}
		if len(above) > 0 {
			p.NewerAfter = id(p.Items[0])
		}
	}
	return p, nil
}
