package ripple

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	good := []string{"user.created", "user.signup.completed", "order.payment-failed", "a1.b_2", strings.Repeat("a", 127) + "." + strings.Repeat("b", 127)}
	for _, n := range good {
		if err := ValidateName(n); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", n, err)
		}
	}
	bad := []string{"", "user", "*", ">", "a.*.b", "user.>", "$JS.API.x", "a..b", ".a.b", "a.b.", "User.created",
		"USER_CREATED", "user created.x", "user.créé", "a.b\x00", "../x", "a\tb.c", strings.Repeat("a", 200) + "." + strings.Repeat("b", 60)}
	for _, n := range bad {
		err := ValidateName(n)
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidName", n, err)
		}
	}
}

func TestValidatePattern(t *testing.T) {
	for _, p := range []string{">", "user.*", "order.>", "*.created", "a.*.c", "user.signup.completed"} {
		if err := ValidatePattern(p); err != nil {
			t.Errorf("ValidatePattern(%q) = %v", p, err)
		}
	}
	for _, p := range []string{"", "*", "a.>.b", "a.b*", "a.**", "A.b", "a..b", "user"} {
		if err := ValidatePattern(p); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidatePattern(%q) = %v, want ErrInvalidName", p, err)
		}
	}
}

func TestValidateHandlerName(t *testing.T) {
	for _, n := range []string{"email.welcome", "billing-stripe", "a", "x_1"} {
		if err := ValidateHandlerName(n); err != nil {
			t.Errorf("ValidateHandlerName(%q) = %v", n, err)
		}
	}
	for _, n := range []string{"", ".x", "Email", "a b", "a*", "a>", strings.Repeat("a", 129)} {
		if err := ValidateHandlerName(n); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateHandlerName(%q) = %v, want ErrInvalidName", n, err)
		}
	}
}

func TestLint(t *testing.T) {
	cases := map[string]string{
		"createUser":            `command ("create"); name the fact that happened, such as "user.created"`,
		"handle-signup":         `such as "signup.handled"`,
		"USER_CREATED":          "upper case",
		"user.signup.completed": "",
		"send.email":            `such as "email.sent"`,
		"user.create":           `command ("create"); name the fact that happened, such as "user.created"`,
		"payment.charge":        `such as "payment.charged"`,
		"user.created":          "",
		"charge":                `such as "<entity>.charged"`,
	}
	for name, want := range cases {
		got := strings.Join(Lint(name), "; ")
		if want == "" && got != "" {
			t.Errorf("Lint(%q) = %q, want no advice", name, got)
		}
		if want != "" && !strings.Contains(got, want) {
			t.Errorf("Lint(%q) = %q, want advice mentioning %q", name, got, want)
		}
	}
	if got := Lint("USER_CREATED"); !strings.Contains(strings.Join(got, " "), `"user.created"`) {
		t.Errorf("Lint(USER_CREATED) should suggest user.created, got %q", got)
	}
	// Every suggestion must itself pass.
	for verb := range imperativeVerbs {
		for _, name := range []string{"job." + verb, verb + "Job", verb + ".job"} {
			if len(Lint(name)) == 0 {
				continue
			}
			if s := suggestName(name); len(Lint(s)) != 0 {
				t.Errorf("Lint(%q) suggests %q, which lint flags: %q", name, s, Lint(s))
			}
		}
	}
	if got := Lint("CreateUser"); !strings.Contains(strings.Join(got, " "), `write "user.created"`) {
		t.Errorf("Lint(CreateUser) should suggest user.created, got %q", got)
	}
}

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"user.created", "a..b", "$JS.x", "a.*", "é.x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateName(s) != nil {
			return
		}
		// Whatever passes must be safe on every broker: no wildcards,
		// no system prefixes, no empty segments, bounded length.
		if len(s) > MaxNameLength || strings.ContainsAny(s, "*> $\t\n") || strings.Contains(s, "..") ||
			strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || s != strings.ToLower(s) {
			t.Fatalf("ValidateName accepted %q", s)
		}
		if ValidatePattern(s) != nil {
			t.Fatalf("a valid name %q must be a valid pattern", s)
		}
	})
}
