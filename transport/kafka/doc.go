// Package kafka is Ripple's Kafka transport (Level 3).
package kafka
