package workers

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// An SMTP server that accepts and then never answers must not hold a send
// past its context: a worker shutting down cancels its jobs' contexts, and
// a send that ignored that kept the job "running" until River's rescue.
func TestSMTPSendStopsWhenItsContextEnds(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c // held open, silent
		}
	}()
	m, err := NewSMTPMailer("smtp://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- m.Send(ctx, Message{From: "a@example.com", To: "b@example.com", Subject: "s", Text: "t", HTML: "<p>t</p>"})
	}()
	select {
	case conn := <-accepted:
		defer conn.Close()
	case err := <-done:
		t.Fatalf("send ended before connecting: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("send after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second): // the SMTP timeout is 20 s
		t.Fatal("send still running 5 s after its context ended")
	}
}
