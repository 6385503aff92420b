package observability

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are every Prometheus collector QuickScale exports. One value per
// process, built on a registry the caller owns (no default registry).
type Metrics struct {
	Registry *prometheus.Registry

	HTTPRequests *prometheus.CounterVec   // route, method, code
	HTTPDuration *prometheus.HistogramVec // route, method
	HTTPInFlight prometheus.Gauge

	JobsFinished   *prometheus.CounterVec   // kind, queue, outcome
	JobRunTime     *prometheus.HistogramVec // kind
	JobQueueWait   *prometheus.HistogramVec // kind
	JobsRunning    *prometheus.GaugeVec     // kind
	QueueJobs      *prometheus.GaugeVec     // queue, state
	QueueOldestAge *prometheus.GaugeVec     // queue

	WebhooksReceived         *prometheus.CounterVec // type
	WebhookSignatureFailures prometheus.Counter
	WebhookDuplicates        prometheus.Counter
	WebhookIngestBatch       prometheus.Histogram
	WebhookOutcomes          *prometheus.CounterVec // type, outcome

	CreditsGranted     *prometheus.CounterVec // kind
	CreditsConsumed    *prometheus.CounterVec // kind, service
	ConsumeBatch       prometheus.Histogram
	CreditsExpired     *prometheus.CounterVec // kind
	CreditsClawedBack  *prometheus.CounterVec // kind
	CreditsRemoved     *prometheus.CounterVec // reason
	Payments           *prometheus.CounterVec // type, status, currency
	RevenueMinor       *prometheus.CounterVec // type, currency
	RefundsMinor       *prometheus.CounterVec // currency
	CreditsOutstanding *prometheus.GaugeVec   // kind
	// CreditsExpiring7d has no labels but is a vector so that a worker that
	// loses River leadership can remove its series instead of exporting a
	// stale value forever (max across instances would pick it up).
	CreditsExpiring7d *prometheus.GaugeVec
	// SweptThrough is the expiry sweep's watermark (store.SweptThrough), a
	// leader-only vector like CreditsExpiring7d.
	SweptThrough     *prometheus.GaugeVec
	SweepScheduleGap *prometheus.GaugeVec
	// Subscriptions counts live subscriptions by plan and status (active,
	// past_due); SubscriptionsCanceling those of them set to end with
	// their period; SubscriptionsMonthlyMinor what they bill a month
	// (leader-only, refreshed with the liability).
	Subscriptions             *prometheus.GaugeVec // plan, status
	SubscriptionsCanceling    *prometheus.GaugeVec // plan
	SubscriptionsMonthlyMinor *prometheus.GaugeVec // currency
	MetricsRefreshAge         *prometheus.GaugeVec // what
}

// latencyBuckets suit requests and jobs that should take milliseconds.
func latencyBuckets() []float64 {
	return []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
}

// NewMetrics builds the collectors and registers them, with the Go runtime
// and process collectors, on a new registry.
func NewMetrics() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quickscale_http_requests_total", Help: "HTTP requests by chi route pattern, method and status class.",
		}, []string{"route", "method", "code"}),
		HTTPDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "quickscale_http_request_duration_seconds", Help: "HTTP request latency by route pattern and method.", Buckets: latencyBuckets(),
		}, []string{"route", "method"}),
		HTTPInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "quickscale_http_requests_in_flight", Help: "HTTP requests being served.",
		}),
		JobsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quickscale_river_jobs_total", Help: "River jobs worked by kind, queue and outcome (completed, failed, discarded, cancelled, snoozed).",
		}, []string{"kind", "queue", "outcome"}),
		JobRunTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "quickscale_river_job_run_duration_seconds", Help: "Time River jobs spent running, by kind.", Buckets: latencyBuckets(),
		}, []string{"kind"}),
		JobQueueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "quickscale_river_job_queue_wait_seconds", Help: "Time River jobs waited between becoming available and starting, by kind.", Buckets: latencyBuckets(),
		}, []string{"kind"}),
		JobsRunning: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "quickscale_river_jobs_running", Help: "River jobs running in this process, by kind.",
		}, []string{"kind"}),
		QueueJobs: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "quickscale_river_queue_jobs", Help: "Jobs per queue and state (exported by the River leader only; capped per query).",
		}, []string{"queue", "state"}),
		QueueOldestAge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "quickscale_river_queue_oldest_available_age_seconds", Help: "Age of the oldest available job per queue (River leader only).",
		}, []string{"queue"}),
		WebhooksReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quickscale_webhooks_received_total", Help: "Verified Stripe events received, by event type.",
		}, []string{"type"}),
		WebhookSignatureFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quickscale_webhook_signature_failures_total", Help: "Webhook deliveries refused for a missing, bad or stale signature.",
		}),
		WebhookIngestBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "quickscale_webhook_ingest_batch_events", Help: "Webhook events stored per ingest transaction (concurrent deliveries share one).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64},
		}),
		WebhookDuplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quickscale_webhook_duplicates_total", Help: "Webhook deliveries of events already stored.",
		}),
		WebhookOutcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quickscale_webhook_events_processed_total", Help: "Stripe events processed by workers, by type and outcome (applied, ignored, failed); an event applied or ignored again (re-processed) counts once.",
		}, []string{"type", "outcome"}),
		CreditsGranted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quickscale_credits_granted_total", Help: "Credits granted, by grant kind.",
		}, []string{"kind"}),
		ConsumeBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "quickscale_consume_batch_spends", Help: "Spends committed per consume transaction (concurrent spends share one).",
			Buckets: []float64{1, 2, 4, 8, 16, 32},
		}),
		CreditsConsumed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quickscale_credits_consumed_total", Help: "Credits spent, by the kind of grant that paid and the service.",
		}, []string{"kind", "service"}),
		CreditsExpired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quickscale_credits_expired_total", Help: "Credits expired unspent (breakage), by grant kind.",
		}, []string{"kind"}),
		CreditsClawedBack: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quickscale_credits_clawed_back_total", Help: "Credits taken back after refunds, by grant kind.",
		}, []string{"kind"}),
		CreditsRemoved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quickscale_credits_removed_total", Help: "Credits taken away other than by spending, expiry or a refund: removed by support (reason support) or forfeited when an account is deleted (reason forfeited).",
		}, []string{"reason"}),
		Payments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quickscale_payments_total", Help: "Payment status changes (a payment refunded in two parts counts three times: paid, partly refunded, refunded), by product type, new status and currency.",
		}, []string{"type", "status", "currency"}),
		RevenueMinor: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quickscale_revenue_minor_units_total", Help: "Money received in minor units (cents), by product type and currency.",
		}, []string{"type", "currency"}),
		RefundsMinor: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quickscale_refunds_minor_units_total", Help: "Money refunded in minor units, by currency.",
		}, []string{"currency"}),
		CreditsOutstanding: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "quickscale_credits_outstanding", Help: "Live unspent credits by grant kind: the credit liability (River leader only).",
		}, []string{"kind"}),
		CreditsExpiring7d: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "quickscale_credits_expiring_7d", Help: "Live credits that expire within the next 7 days (River leader only).",
		}, nil),
		SweptThrough: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "quickscale_credits_swept_through_timestamp_seconds", Help: "Every grant that expired before this time has been swept: the oldest unswept expiry, or the refresh time when none is overdue (River leader only).",
		}, nil),
		SweepScheduleGap: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "quickscale_credits_sweep_schedule_gap_seconds", Help: "Longest time between two scheduled expiry sweeps (EXPIRE_CREDITS_SCHEDULE; River leader only).",
		}, nil),
		Subscriptions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "quickscale_subscriptions", Help: "Live subscriptions by plan and status (active, past_due: a renewal failed and is retried) (River leader only).",
		}, []string{"plan", "status"}),
		SubscriptionsCanceling: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "quickscale_subscriptions_canceling", Help: "Live subscriptions set to end with their current period, by plan (River leader only).",
		}, []string{"plan"}),
		SubscriptionsMonthlyMinor: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "quickscale_subscriptions_monthly_revenue_minor_units", Help: "What live subscriptions bill a month (monthly recurring revenue) in minor units, by currency (River leader only).",
		}, []string{"currency"}),
		MetricsRefreshAge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "quickscale_metrics_refreshed_timestamp_seconds", Help: "When the leader-only gauges were last refreshed, by group.",
		}, []string{"what"}),
	}
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.HTTPRequests, m.HTTPDuration, m.HTTPInFlight,
		m.JobsFinished, m.JobRunTime, m.JobQueueWait, m.JobsRunning, m.QueueJobs, m.QueueOldestAge,
		m.WebhooksReceived, m.WebhookSignatureFailures, m.WebhookDuplicates, m.WebhookIngestBatch, m.WebhookOutcomes,
		m.CreditsGranted, m.CreditsConsumed, m.ConsumeBatch, m.CreditsExpired, m.CreditsClawedBack, m.CreditsRemoved,
		m.Payments, m.RevenueMinor, m.RefundsMinor, m.CreditsOutstanding, m.CreditsExpiring7d, m.SweptThrough, m.SweepScheduleGap,
		m.Subscriptions, m.SubscriptionsCanceling, m.SubscriptionsMonthlyMinor, m.MetricsRefreshAge,
	)
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// EventTypeLabel maps a Stripe event type to a label value. Only events
// with a verified signature are labelled, and Stripe's types are a fixed set
// of a few hundred; anything not shaped like one becomes "other".
func EventTypeLabel(t string) string {
	if t == "" || len(t) > 64 {
		return "other"
	}
	for _, r := range t {
		if (r < 'a' || r > 'z') && r != '_' && r != '.' {
			return "other"
		}
	}
	return t
}

// CodeClass turns a status code into 2xx, 3xx, 4xx or 5xx.
func CodeClass(code int) string {
	if code < 100 || code > 599 {
		return "other"
	}
	return string(rune('0'+code/100)) + "xx"
}

// LabelSafe bounds free-form label values (service slugs are admin-defined
// and bounded by the catalog; this only guards against surprises).
func LabelSafe(s string) string {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 63 {
		return "other"
	}
	return s
}

// RegisterReady exports quickscale_ready: 1 while ready() reports that this
// process can serve (Postgres answers, migrations current), else 0. It is
// evaluated at scrape time; the check is a ping once migrations were seen
// current.
func (m *Metrics) RegisterReady(ready func() bool) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "quickscale_ready", Help: "1 when this process is ready to serve (Postgres answers and migrations are current), else 0.",
	}, func() float64 {
		if ready() {
			return 1
		}
		return 0
	}))
}

// Sample is one series as the registry exports it: its labels and value
// (for a histogram, its number of observations).
type Sample struct {
	Labels map[string]string
	Value  float64
}

// Samples gathers the series of one metric, for checks and tools that read
// the process's own metrics.
func (m *Metrics) Samples(name string) ([]Sample, error) {
	families, err := m.Registry.Gather()
	if err != nil {
		return nil, err
	}
	var out []Sample
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, mm := range f.GetMetric() {
			s := Sample{Labels: map[string]string{}}
			for _, lp := range mm.GetLabel() {
				s.Labels[lp.GetName()] = lp.GetValue()
			}
			switch {
			case mm.Counter != nil:
				s.Value = mm.Counter.GetValue()
			case mm.Gauge != nil:
				s.Value = mm.Gauge.GetValue()
			case mm.Histogram != nil:
				s.Value = float64(mm.Histogram.GetSampleCount())
			case mm.Untyped != nil:
				s.Value = mm.Untyped.GetValue()
			}
			out = append(out, s)
		}
	}
	return out, nil
}
