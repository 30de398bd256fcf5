package wake

import "testing"

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestSignal(t *testing.T) {
	var s Signal
	s.Fire() // no waiter: nothing to wake, and no panic
	w := s.Wait()
	if closed(w) {
		t.Fatal("Wait's channel is closed before any Fire")
	}
	if s.Wait() != w {
		t.Fatal("two waiters before a Fire got different channels")
	}
	s.Fire()
	if !closed(w) {
		t.Fatal("Fire did not wake the waiter")
	}
	if closed(s.Wait()) {
		t.Fatal("a wait taken after Fire is already woken")
	}
}

func TestSet(t *testing.T) {
	var set Set
	set.Fire(7) // unknown id: nothing to wake
	a, b := set.For(1).Wait(), set.For(2).Wait()
	if set.For(1).Wait() != a || set.Len() != 2 {
		t.Fatalf("For(1) is not one signal per id (len %d)", set.Len())
	}
	set.Fire(1)
	if !closed(a) || closed(b) {
		t.Fatalf("Fire(1) woke 1: %v, 2: %v; want only 1", closed(a), closed(b))
	}
	a = set.For(1).Wait()
	set.FireAll()
	if !closed(a) || !closed(b) {
		t.Fatal("FireAll left a waiter asleep")
	}
}
