package observability

import (
	"context"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// RiverMiddleware tracks the jobs running in this process by kind.
type RiverMiddleware struct {
	river.MiddlewareDefaults
	m *Metrics
}

// NewRiverMiddleware returns worker middleware bound to m.
func NewRiverMiddleware(m *Metrics) *RiverMiddleware { return &RiverMiddleware{m: m} }

// Work implements rivertype.WorkerMiddleware.
func (rm *RiverMiddleware) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	g := rm.m.JobsRunning.WithLabelValues(job.Kind)
	g.Inc()
	defer g.Dec()
	return doInner(ctx)
}

// RiverEventKinds are the events ObserveRiverEvents expects a subscription to.
func RiverEventKinds() []river.EventKind {
	return []river.EventKind{
		river.EventKindJobCompleted, river.EventKindJobFailed,
		river.EventKindJobCancelled, river.EventKindJobSnoozed,
	}
}

// ObserveRiverEvents records job outcomes and timings from a River event
// subscription until the channel closes or ctx ends.
func (m *Metrics) ObserveRiverEvents(ctx context.Context, events <-chan *river.Event) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			m.ObserveRiverEvent(ev)
		}
	}
}

// ObserveRiverEvent records one job event.
func (m *Metrics) ObserveRiverEvent(ev *river.Event) {
	if ev == nil || ev.Job == nil {
		return
	}
	var outcome string
	switch ev.Kind {
	case river.EventKindJobCompleted:
		outcome = "completed"
	case river.EventKindJobFailed:
		outcome = "failed"
		if ev.Job.State == rivertype.JobStateDiscarded {
			outcome = "discarded"
		}
	case river.EventKindJobCancelled:
		outcome = "cancelled"
	case river.EventKindJobSnoozed:
		outcome = "snoozed"
	default:
		return
	}
	m.JobsFinished.WithLabelValues(ev.Job.Kind, ev.Job.Queue, outcome).Inc()
	if ev.JobStats != nil {
		m.JobRunTime.WithLabelValues(ev.Job.Kind).Observe(ev.JobStats.RunDuration.Seconds())
		m.JobQueueWait.WithLabelValues(ev.Job.Kind).Observe(ev.JobStats.QueueWaitDuration.Seconds())
	}
}
