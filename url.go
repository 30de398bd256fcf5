package ripple

// RedactURL returns a transport URL with its password, if it has one,
// replaced by xxxxx, as Ripple's own errors print URLs. Tools that show
// the URL they opened, such as the ripple command, use it so that their
// output can be pasted into a ticket or a log without leaking credentials.
func RedactURL(url string) string { return redactURL(url) }
