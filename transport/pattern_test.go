package transport

import "testing"

func TestMatch(t *testing.T) {
	cases := []struct {
		pattern, typ string
		want         bool
	}{
		{"user.created", "user.created", true},
		{"user.created", "user.deleted", false},
		{"user.*", "user.created", true},
		{"user.*", "user.signup.completed", false},
		{"user.*", "user", false},
		{"*.created", "order.created", true},
		{"a.*.c", "a.b.c", true},
		{"a.*.c", "a.b.d", false},
		{"order.>", "order.placed", true},
		{"order.>", "order.payment.failed", true},
		{"order.>", "order", false},
		{"order.>", "orders.placed", false},
		{">", "anything.at.all", true},
		{"user.created", "user.created.v2", false},
		{"user.created.v2", "user.created", false},
	}
	for _, c := range cases {
		if got := Match(c.pattern, c.typ); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.pattern, c.typ, got, c.want)
		}
	}
}
