package store

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
