package store_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// BenchmarkDrawManyGrants times one spend and one admin removal that draw
// on 1,000, 4,000 and 16,000 one-credit grants (a user who collected many
// small promotions), and the credit history's first page, which shows
// such a spend's line. The cost must grow in proportion to the grants drawn:
// the target is a cost per grant at 16,000 within 2x of that at 1,000.
// Before migration 00021 it grew with their square (a spend drawing 7,900
// grants took 4.1 s).
func BenchmarkDrawManyGrants(b *testing.B) {
	st, _ := benchStore(b, 4)
	ctx := context.Background()
	admin := storetest.NewUser(b, st, storetest.UserOpts{Admin: true})
	sizes := []int{1_000, 4_000, 16_000}
	const tries = 3
	for _, op := range []string{"spend", "admin removal", "history page"} {
		perGrant := map[int]time.Duration{}
		for _, n := range sizes {
			svc := storetest.NewService(b, st, storetest.ServiceOpts{Cost: int64(n)})
			var took []time.Duration
			for try := range tries {
				u := storetest.NewUser(b, st, storetest.UserOpts{})
				storetest.ManyGrants(b, st.Pool(), u.ID, store.GrantPromo, n, nil)
				if _, err := st.Pool().Exec(ctx, `VACUUM ANALYZE grants`); err != nil {
					b.Fatal(err)
				}
				var drawn int
				if op == "history page" {
					// The page showing that spend's line (its first).
					if _, _, err := st.Consume(ctx, store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: fmt.Sprint("draw-", try)}); err != nil {
						b.Fatalf("spend of %d: %v", n, err)
					}
				}
				t0 := time.Now()
				switch op {
				case "history page":
					page, err := st.History(ctx, u.ID, 0, 25)
					if err != nil || len(page.Items) == 0 {
						b.Fatalf("history after a spend of %d: %v", n, err)
					}
					drawn = len(page.Items[0].Drawn)
				case "spend":
					usage, _, err := st.Consume(ctx, store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: fmt.Sprint("draw-", try)})
					if err != nil {
						b.Fatalf("spend of %d: %v", n, err)
					}
					drawn = len(usage.Drawn)
				default:
					res, err := st.Adjust(ctx, store.Adjustment{UserID: u.ID, Delta: -int64(n), Actor: &admin.ID, Reason: "bench"})
					if err != nil {
						b.Fatalf("removal of %d: %v", n, err)
					}
					drawn = len(res.Drawn)
				}
				took = append(took, time.Since(t0))
				if drawn != n {
					b.Fatalf("%s drew %d grants, want %d", op, drawn, n)
				}
			}
			slices.Sort(took)
			med := took[tries/2]
			perGrant[n] = med / time.Duration(n)
			fmt.Fprintf(os.Stdout, "%-44s %10s  (median of %d; %.1f µs a grant)\n",
				map[bool]string{true: fmt.Sprintf("history page, a use of %d grants", n), false: fmt.Sprintf("%s drawing %d grants", op, n)}[op == "history page"], med.Round(time.Millisecond), tries, float64(med.Nanoseconds())/float64(n)/1000)
		}
		growth := float64(perGrant[sizes[len(sizes)-1]]) / float64(perGrant[sizes[0]])
		fmt.Fprintf(os.Stdout, "%-44s %10.2f  (cost a grant at %d over at %d; target <= 2, linear)\n",
			op+": growth", growth, sizes[len(sizes)-1], sizes[0])
		b.ReportMetric(growth, map[string]string{"spend": "spend-growth", "admin removal": "removal-growth", "history page": "history-growth"}[op])
	}
}
