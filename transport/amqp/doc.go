// Package amqp is Ripple's RabbitMQ transport (amqp:// and amqps://).
package amqp
