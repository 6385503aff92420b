package observability

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// poolCollector exports pgxpool statistics at scrape time (a cheap,
// in-memory read).
type poolCollector struct {
	stat                                    func() *pgxpool.Stat
	acquired, idle, total, max              *prometheus.Desc
	acquireCount, acquireWait, emptyAcquire *prometheus.Desc
	canceledAcquire, constructing           *prometheus.Desc
}

// RegisterPool exports the pool's connection statistics.
func (m *Metrics) RegisterPool(stat func() *pgxpool.Stat) {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("quickscale_db_pool_"+name, help, nil, nil)
	}
	m.Registry.MustRegister(&poolCollector{
		stat:            stat,
		acquired:        d("acquired_connections", "Connections in use."),
		idle:            d("idle_connections", "Idle connections."),
		total:           d("total_connections", "Open connections."),
		max:             d("max_connections", "Pool size limit."),
		constructing:    d("constructing_connections", "Connections being opened."),
		acquireCount:    d("acquires_total", "Connections acquired from the pool."),
		acquireWait:     d("acquire_wait_seconds_total", "Time spent waiting for a connection when none was idle."),
		emptyAcquire:    d("empty_acquires_total", "Acquires that had to wait because the pool was empty."),
		canceledAcquire: d("canceled_acquires_total", "Acquires cancelled before a connection was free."),
	})
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.acquired, c.idle, c.total, c.max, c.constructing, c.acquireCount, c.acquireWait, c.emptyAcquire, c.canceledAcquire} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stat()
	ch <- prometheus.MustNewConstMetric(c.acquired, prometheus.GaugeValue, float64(s.AcquiredConns()))
	ch <- prometheus.MustNewConstMetric(c.idle, prometheus.GaugeValue, float64(s.IdleConns()))
	ch <- prometheus.MustNewConstMetric(c.total, prometheus.GaugeValue, float64(s.TotalConns()))
	ch <- prometheus.MustNewConstMetric(c.max, prometheus.GaugeValue, float64(s.MaxConns()))
	ch <- prometheus.MustNewConstMetric(c.constructing, prometheus.GaugeValue, float64(s.ConstructingConns()))
	ch <- prometheus.MustNewConstMetric(c.acquireCount, prometheus.CounterValue, float64(s.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(c.acquireWait, prometheus.CounterValue, s.EmptyAcquireWaitTime().Seconds())
	ch <- prometheus.MustNewConstMetric(c.emptyAcquire, prometheus.CounterValue, float64(s.EmptyAcquireCount()))
	ch <- prometheus.MustNewConstMetric(c.canceledAcquire, prometheus.CounterValue, float64(s.CanceledAcquireCount()))
}
